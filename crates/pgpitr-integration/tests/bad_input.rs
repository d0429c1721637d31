//! Bad input gives a clear error and changes nothing on disk.

use pgpitr_integration::{Cluster, ClusterOptions};
use std::fs;

#[test]
fn bad_config_target_window_and_folder() {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.connect(5432);
    db.batch_execute("CREATE TABLE t (id serial, tag text)")
        .unwrap();
    let before_backup = chrono::Utc::now() - chrono::Duration::hours(1);
    c.basebackup();
    db.batch_execute("INSERT INTO t (tag) VALUES ('x')")
        .unwrap();
    c.switch_and_wait(5432);
    let into = c.root.join("never-created");
    let into_s = into.to_str().unwrap();

    // A malformed config names the file, the line and the key.
    let bad = c.root.join("bad.toml");
    fs::write(
        &bad,
        fs::read_to_string(&c.cfg_path).unwrap().replacen(
            "[archive]",
            "[archive]\ncompresion = \"zstd\"",
            1,
        ),
    )
    .unwrap();
    let r = pgpitr_integration::Run::from(
        std::process::Command::new(c.tools.join("pgpitr"))
            .args(["--config", bad.to_str().unwrap(), "status"])
            .output()
            .unwrap(),
    );
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("bad.toml")
            && r.stderr.contains("compresion")
            && r.stderr.contains("line"),
        "{}",
        r.stderr
    );

    let cases: [(&str, &str); 4] = [
        ("yesterday", "cannot parse target"),
        (
            &before_backup.to_rfc3339(),
            "before the end of the oldest backup",
        ),
        (
            &(chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
            "newest archived transaction",
        ),
        ("lsn:FF/0", "after the newest archived transaction"),
    ];
    for (target, expect) in cases {
        let r = c.tool(
            "pgpitr",
            &[
                "restore", "--to", target, "--into", into_s, "--port", "5433",
            ],
        );
        assert_ne!(r.code, 0, "{target}");
        assert!(r.stderr.contains(expect), "{target}: {}", r.stderr);
        if expect != "cannot parse target" {
            assert!(
                r.stderr.contains("restorable window"),
                "{target}: {}",
                r.stderr
            );
        }
        assert!(!into.exists(), "{target} touched the disk");
    }

    // A non-empty --into folder is refused and left alone.
    let full = c.root.join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("keep.txt"), "precious").unwrap();
    let r = c.tool(
        "pgpitr",
        &[
            "restore",
            "--to",
            "latest",
            "--into",
            full.to_str().unwrap(),
            "--port",
            "5433",
        ],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    assert_eq!(fs::read_dir(&full).unwrap().count(), 1);
    assert_eq!(
        fs::read_to_string(full.join("keep.txt")).unwrap(),
        "precious"
    );

    // --dry-run prints the plan and changes nothing.
    let r = c
        .tool(
            "pgpitr",
            &[
                "restore",
                "--to",
                "latest",
                "--into",
                into_s,
                "--port",
                "5433",
                "--dry-run",
            ],
        )
        .ok();
    assert!(
        r.stdout.contains("backup:") && r.stdout.contains("nothing was changed"),
        "{}",
        r.stdout
    );
    assert!(!into.exists());

    // status shows the window.
    let r = c.tool("pgpitr", &["status"]).ok();
    assert!(r.stdout.contains("restorable from"), "{}", r.stdout);
}
