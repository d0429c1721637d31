//! `healthcheck --config C [--json]`: exit 0 when healthy; otherwise one line per failing
//! check on stderr saying what to do, and exit 1 (so a systemd `OnFailure=` hook fires).

use clap::Parser;
use pgpitr_cli::{init_logging, ConfigArgs};
use std::process::ExitCode;

/// Check that the instance can still be recovered to a second ago.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print the report as JSON on stdout (see docs/json.md).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let cfg = match cli.config.load() {
        Ok(c) => c,
        Err(e) => {
            if cli.json {
                // The error document every --json run prints (docs/json.md).
                let doc = serde_json::json!({ "ok": false, "error": pgpitr_cli::one_line(&e) });
                println!("{doc}");
            }
            return pgpitr_cli::fail("healthcheck", &e, 2);
        }
    };
    let report = pgpitr_health::run(&cfg);
    if let Some(m) = &cfg.metrics {
        if let Err(e) = pgpitr_health::metrics(&report).write(&m.textfile_dir) {
            eprintln!("healthcheck: warning: {e}");
        }
    }
    if cli.json {
        if let Err(e) = pgpitr_cli::print_json(&report) {
            return pgpitr_cli::fail("healthcheck", &e, 2);
        }
    } else {
        for c in &report.checks {
            println!(
                "{} {:<18} {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.check,
                c.detail
            );
        }
    }
    for w in &report.warnings {
        eprintln!("healthcheck: warning: {w}");
    }
    for c in report.checks.iter().filter(|c| !c.ok) {
        eprintln!(
            "healthcheck: {}: {}; {}",
            c.check,
            c.detail,
            c.advice.as_deref().unwrap_or("")
        );
    }
    if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
