# The rig's own small renderer: turns what the module's plain-Nix core (nixos-modules/lib)
# produces for a set of instances into real files, the way NixOS would lay them out:
#   /etc/systemd/system/<unit>.service|.timer, <target>.wants|.requires/ symlinks,
#   /etc/tmpfiles.d/pgpitr.conf, /etc/pgpitr/<name>.json, /etc/pgpitr/<name>/*.conf,
#   /etc/pgpitr-rig/scripts/<unit>-pre-start|post-start (preStart/postStart).
#
# Evaluated with builtins only (nixpkgs cannot be loaded here):
#   nix-instantiate --eval --read-write-mode render.nix --arg instances '...' --argstr ...
# The result is the store path of a shell script (written with builtins.toFile) that writes
# every file under the root given as its first argument, so no JSON decoder is needed.
#
# Limits (what nixpkgs' nixos/lib/systemd-lib.nix does and this does not; docs/nixos.md):
# - only the unit options the module uses: description, after, before, wants, requires,
#   requiredBy, wantedBy, onFailure, environment, path, preStart, postStart, unitConfig,
#   serviceConfig, timerConfig, restartTriggers/reloadTriggers/restartIfChanged (written as
#   X- keys and comments; only switch-to-configuration reads them, and the rig has none);
# - `path` becomes PATH=<p>/bin:<p>/sbin:... followed by Debian's /usr/sbin:/usr/bin:/sbin:/bin
#   (NixOS adds coreutils, findutils, grep, sed, systemd instead);
# - scripts run with /bin/sh -e, not nixpkgs' bash with `set -e` and a store-path shebang;
# - no unit overrides, aliases, drop-ins, or `enable = false` handling.
{ instances                       # { <name> = instance definition (as in services.pgpitr.instances) }
, pgMajor ? "15"
, paths                           # { pgpitr; postgresql; restic; } stand-ins for store paths
, extraUnits ? { }                # { "<file name>" = "unit text"; } added verbatim (rig helpers)
, asFiles ? false                 # true: { files; built; } instead of the install script
                                  # (../eval/compare-units.nix compares the unit texts)
}:
let
  inherit (builtins) attrNames concatStringsSep concatMap isBool isInt isList isString
    mapAttrs toJSON filter elem foldl';
  pgpitrLib = import ../../nixos-modules/lib { };
  unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];

  built = mapAttrs (name: instance: pgpitrLib.mkInstance {
    inherit name instance paths pgMajor;
  }) instances;

  value = v:
    if isBool v then (if v then "true" else "false")
    else if isInt v then toString v
    else toString v;
  # A list becomes one line per element, as NixOS renders it.
  line = k: v:
    if isList v then concatStringsSep "" (map (x: "${k}=${value x}\n") v)
    else "${k}=${value v}\n";
  section = name: attrs:
    "[${name}]\n" + concatStringsSep "" (map (k: line k attrs.${k}) (attrNames attrs));
  joined = l: concatStringsSep " " l;
  optAttr = c: k: v: if c then { ${k} = v; } else { };

  scriptFile = unit: kind: text: {
    path = "/etc/pgpitr-rig/scripts/${unit}-${kind}";
    mode = "0755";
    text = "#!/bin/sh -e\n" + text;
  };

  unitSection = u: extraTriggers:
    section "Unit" (
      # As nixpkgs' systemd-lib.nix: no Description= line for an empty description.
      optAttr ((u.description or "") != "") "Description" u.description
      // optAttr ((u.after or [ ]) != [ ]) "After" (joined u.after)
      // optAttr ((u.before or [ ]) != [ ]) "Before" (joined u.before)
      // optAttr ((u.wants or [ ]) != [ ]) "Wants" (joined u.wants)
      // optAttr ((u.requires or [ ]) != [ ]) "Requires" (joined u.requires)
      // optAttr ((u.onFailure or [ ]) != [ ]) "OnFailure" (joined u.onFailure)
      // extraTriggers
      // (u.unitConfig or { }));

  renderService = unitName: u:
    let
      pathDirs = concatMap (p: [ "${p}/bin" "${p}/sbin" ]) (u.path or [ ])
        ++ [ "/usr/sbin" "/usr/bin" "/sbin" "/bin" ];
      env = (u.environment or { }) // { PATH = concatStringsSep ":" pathDirs; };
      pre = if (u.preStart or "") != "" then [ (scriptFile unitName "pre-start" u.preStart) ] else [ ];
      post = if (u.postStart or "") != "" then [ (scriptFile unitName "post-start" u.postStart) ] else [ ];
      sc = u.serviceConfig;
      triggers =
        optAttr ((u.restartTriggers or [ ]) != [ ]) "X-Restart-Triggers" (joined (map toString u.restartTriggers))
        // optAttr ((u.reloadTriggers or [ ]) != [ ]) "X-Reload-Triggers" (joined (map toString u.reloadTriggers));
      text = unitSection u triggers + "\n"
        + section "Service" (
          { Environment = map (k: "\"${k}=${env.${k}}\"") (attrNames env); }
          // optAttr ((u.restartIfChanged or true) == false) "X-RestartIfChanged" false
          // sc
          // optAttr (sc ? Environment) "Environment"
            # serviceConfig.Environment entries as written (NixOS' attrsToSection adds no quotes).
            (map (k: "\"${k}=${env.${k}}\"") (attrNames env) ++ sc.Environment)
          // optAttr (pre != [ ]) "ExecStartPre" (map (f: f.path) pre)
          // optAttr (post != [ ]) "ExecStartPost" (map (f: f.path) post));
    in
    [ { path = "/etc/systemd/system/${unitName}.service"; mode = "0644"; inherit text; } ] ++ pre ++ post;

  renderTimer = unitName: t: [{
    path = "/etc/systemd/system/${unitName}.timer";
    mode = "0644";
    text = unitSection t { } + "\n" + section "Timer" t.timerConfig;
  }];

  # wantedBy / requiredBy: symlinks in <target>.wants / .requires, as NixOS makes them.
  links = file: u:
    map (t: { link = "/etc/systemd/system/${t}.wants/${file}"; target = "../${file}"; }) (u.wantedBy or [ ])
    ++ map (t: { link = "/etc/systemd/system/${t}.requires/${file}"; target = "../${file}"; }) (u.requiredBy or [ ]);

  perInstance = name: r:
    {
      files =
        concatMap (u: renderService u r.services.${u}) (attrNames r.services)
        ++ concatMap (t: renderTimer t r.timers.${t}) (attrNames r.timers)
        ++ [{ path = "/etc/pgpitr/${name}.json"; mode = "0644"; text = toJSON r.configFile + "\n"; }]
        ++ map (p: { path = "/etc/${p}"; mode = "0644"; text = r.etc.${p}; }) (attrNames r.etc);
      links = concatMap (u: links "${u}.service" r.services.${u}) (attrNames r.services)
        ++ concatMap (t: links "${t}.timer" r.timers.${t}) (attrNames r.timers);
      tmpfiles = r.tmpfiles;
    };
  all = map (n: perInstance n built.${n}) (attrNames built);

  files = concatMap (x: x.files) all
    ++ [{
      path = "/etc/tmpfiles.d/pgpitr.conf";
      mode = "0644";
      text = concatStringsSep "\n" (unique (concatMap (x: x.tmpfiles) all)) + "\n";
    }]
    ++ map (f: { path = "/etc/systemd/system/${f}"; mode = "0644"; text = extraUnits.${f}; }) (attrNames extraUnits);

  eof = "PGPITR_RIG_EOF";
  writeFile = f: ''
    mkdir -p "$root$(dirname ${f.path})"
    cat > "$root${f.path}" <<'${eof}'
    ${f.text}${eof}
    chmod ${f.mode} "$root${f.path}"
  '';
  writeLink = l: ''
    mkdir -p "$root$(dirname ${l.link})"
    ln -sfn ${l.target} "$root${l.link}"
  '';
  script = ''
    #!/bin/sh
    # Written by nixos-tests/systemd/render.nix: installs the rendered files under $1.
    set -eu
    root="$1"
  '' + concatStringsSep "" (map writeFile files)
    + concatStringsSep "" (map writeLink (concatMap (x: x.links) all));
in
if asFiles then { inherit files built; }
else builtins.toFile "pgpitr-rig-install.sh" script
