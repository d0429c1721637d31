# Hand-run check (not in CI), run by ./check-module.sh when NIXPKGS names a nixpkgs checkout:
# renders the rig's units (../systemd/rig.nix: the instances main, second, seeded, sealed) twice,
# with the rig's own renderer (../systemd/render.nix) and with nixpkgs' unit-text functions
# (nixos/lib/systemd-lib.nix: the `unitConfig`, `serviceConfig`/`stage2ServiceConfig`,
# `timerConfig` modules and `serviceToUnit` / `timerToUnit`), and compares them section by
# section, line by line (order inside a section does not matter to systemd).
#
# What stands in for the rest of NixOS (no nixpkgs packages can be built or loaded here):
# - the unit options: a small module declaring the options those functions read (with the
#   defaults of nixos/lib/systemd-unit-options.nix), and preStart/postStart turned into
#   ExecStartPre/ExecStartPost with systemd-lib's own makeJobScript, as systemd-unit-options
#   does; systemd-unit-options.nix itself is not loaded;
# - pkgs: writeText returns "@@<content>@@" (the content is what the file would hold, so the
#   X-*-Triggers can be compared), writeShellScriptBin/writeShellApplication return fake
#   derivations, coreutils/findutils/gnugrep/gnused/systemd are fake store paths;
# - config.systemd: globalEnvironment {}, enableStrictShellChecks false.
#
# Differences that are expected (docs/nixos.md) are counted under `accepted`, anything else
# is listed under `differences`; check-module.sh fails when that is not empty.
{ nixpkgsLib, systemdLib }:
let
  lib = import nixpkgsLib;
  inherit (lib) mkOption types;
  inherit (builtins) attrNames concatMap filter elem hashString substring match head;

  fakePkg = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/${substring 0 32 (hashString "sha256" name)}-${name}";
    meta = { };
  };
  script = scriptName: {
    overrideAttrs = f: fakePkg (f { }).name // { meta.mainProgram = scriptName; };
  };
  pkgs = {
    writeText = _name: text: "@@${text}@@";
    writeShellScriptBin = scriptName: _text: script scriptName;
    writeShellApplication = { name, ... }: script name;
    coreutils = fakePkg "coreutils";
    findutils = fakePkg "findutils";
    gnugrep = fakePkg "gnugrep";
    gnused = fakePkg "gnused";
  };
  config.systemd = {
    package = fakePkg "systemd";
    globalEnvironment = { };
    enableStrictShellChecks = false;
  };
  sl = import systemdLib { inherit config lib pkgs; utils = { }; };

  # ---- stand-in for the unit options (see above) ----
  list = mkOption { type = types.listOf types.str; default = [ ]; };
  unitOptions = { name, config, ... }: {
    options = {
      name = mkOption { type = types.str; };
      enable = mkOption { type = types.bool; default = true; };
      overrideStrategy = mkOption { type = types.str; default = "asDropinIfExists"; };
      description = mkOption { type = types.str; default = ""; };
      unitConfig = mkOption { type = types.attrsOf types.anything; default = { }; };
      startLimitBurst = mkOption { type = types.int; };
      startLimitIntervalSec = mkOption { type = types.int; };
      restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      reloadTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    } // lib.genAttrs [ "aliases" "wantedBy" "requiredBy" "upheldBy" "documentation" "requires"
      "wants" "upholds" "after" "before" "bindsTo" "partOf" "conflicts" "requisite" "onFailure"
      "onSuccess" ] (_: list);
  };
  serviceOptions = { name, config, ... }: {
    options = {
      environment = mkOption { type = types.attrsOf (types.nullOr types.str); default = { }; };
      path = mkOption { type = types.listOf types.anything; default = [ ]; };
      serviceConfig = mkOption { type = types.attrsOf types.anything; default = { }; };
      preStart = mkOption { type = types.lines; default = ""; };
      postStart = mkOption { type = types.lines; default = ""; };
      restartIfChanged = mkOption { type = types.bool; default = true; };
      reloadIfChanged = mkOption { type = types.bool; default = false; };
      stopIfChanged = mkOption { type = types.bool; default = true; };
      enableStrictShellChecks = mkOption { type = types.bool; };
    };
    config = lib.mkMerge [
      (lib.mkIf (config.preStart != "") {
        serviceConfig.ExecStartPre = [ (sl.makeJobScript {
          name = "${name}-pre-start";
          text = config.preStart;
          inherit (config) enableStrictShellChecks;
        }) ];
      })
      (lib.mkIf (config.postStart != "") {
        serviceConfig.ExecStartPost = [ (sl.makeJobScript {
          name = "${name}-post-start";
          text = config.postStart;
          inherit (config) enableStrictShellChecks;
        }) ];
      })
    ];
  };
  timerOptions = {
    options.timerConfig = mkOption { type = types.attrsOf types.anything; default = { }; };
  };
  evalUnit = modules: name: def: (lib.evalModules {
    modules = modules ++ [ { _module.args.name = name; } def ];
  }).config;

  # ---- both renderings of the same instances ----
  rendered = import ../systemd/rig.nix {
    sealedRecipient = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    renderArgs.asFiles = true;
  };
  ours = lib.listToAttrs (map (f: { name = baseNameOf f.path; value = f.text; })
    (filter (f: match "/etc/systemd/system/[^/]+[.](service|timer)" f.path != null) rendered.files));
  nixpkgs = lib.foldl' (a: b: a // b) { } (lib.mapAttrsToList (_: r:
    lib.mapAttrs' (n: def: lib.nameValuePair "${n}.service"
      (sl.serviceToUnit (evalUnit [ unitOptions serviceOptions sl.unitConfig sl.stage2ServiceConfig ] n def)).text)
      r.services
    // lib.mapAttrs' (n: def: lib.nameValuePair "${n}.timer"
      (sl.timerToUnit (evalUnit [ unitOptions timerOptions sl.unitConfig sl.timerConfig ] n def)).text)
      r.timers) rendered.built);

  # ---- normalising ----
  # Every non-empty line prefixed with its "[Section]", one sorted list.
  sections = text:
    let
      step = acc: line:
        if line == "" then acc
        else if match "[[].*[]]" line != null then acc // { cur = line; }
        else acc // { lines = acc.lines ++ [ "${acc.cur} ${line}" ]; };
      r = lib.foldl' step { cur = "[?]"; lines = [ ]; } (lib.splitString "\n" text);
    in lib.sort (a: b: a < b) r.lines;
  # The same script under its two names: /etc/pgpitr-rig/scripts/<unit>-<kind> (rig) and
  # /nix/store/<hash>-unit-script-<unit>-<kind>/bin/<unit>-<kind> (NixOS).
  scripts = line:
    let
      rig = match "(.*)/etc/pgpitr-rig/scripts/([^ ]+)(.*)" line;
      nix = match "(.*)/nix/store/[a-z0-9]+-unit-script-[^/]+/bin/([^ ]+)(.*)" line;
    in if rig != null then "${builtins.elemAt rig 0}<script ${builtins.elemAt rig 1}>${builtins.elemAt rig 2}"
    else if nix != null then "${builtins.elemAt nix 0}<script ${builtins.elemAt nix 1}>${builtins.elemAt nix 2}"
    else line;
  norm = text: map (l: scripts (lib.replaceStrings [ "@@" ] [ "" ] l)) (sections text);

  # Accepted differences (docs/nixos.md, "The rig's renderer and nixpkgs' systemd-lib.nix"):
  # - PATH: NixOS puts coreutils, findutils, grep, sed and systemd after the unit's `path`,
  #   the rig Debian's /usr/sbin:/usr/bin:/sbin:/bin;
  # - [Install] WantedBy=: NixOS writes it besides the .wants symlinks (which both make);
  #   the rig makes only the symlinks;
  accepted = line:
    match "[[]Service[]] Environment=\"PATH=.*" line != null
    || match "[[]Install[]] .*" line != null;

  compare = unit:
    let
      o = norm ours.${unit};
      n = norm nixpkgs.${unit};
      onlyOurs = filter (l: !elem l n) o;
      onlyNixpkgs = filter (l: !elem l o) n;
    in {
      inherit unit;
      accepted = filter accepted (onlyOurs ++ onlyNixpkgs);
      differences = {
        onlyOurs = filter (l: !accepted l) onlyOurs;
        onlyNixpkgs = filter (l: !accepted l) onlyNixpkgs;
      };
    };
  units = lib.sort (a: b: a < b) (attrNames nixpkgs);
  # A unit only nixpkgs renders is reported in `missing`, not compared (that would stop the
  # evaluation on the missing attribute).
  missing = filter (u: !(ours ? ${u})) units;
  results = map compare (filter (u: ours ? ${u}) units);
  differing = filter (r: r.differences.onlyOurs != [ ] || r.differences.onlyNixpkgs != [ ]) results;
in
{
  units = builtins.length units;
  inherit missing;
  acceptedLines = builtins.length (concatMap (r: r.accepted) results);
  acceptedKinds = lib.unique (map (l: head (lib.splitString "=" l)) (concatMap (r: r.accepted) results));
  differences = differing;
}
