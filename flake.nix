{
  description = "pgpitr: point-in-time recovery for self-hosted PostgreSQL, with a NixOS module";

  # Pinned in flake.lock to the revision of ../shared/nix/nixpkgs-pin.json (nixos-25.11).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f (import nixpkgs {
        inherit system;
        overlays = [ self.overlays.default ];
      }));
    in
    {
      overlays.default = final: prev: {
        pgpitr = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (pkgs: {
        default = pkgs.pgpitr;
        pgpitr = pkgs.pgpitr;
      });

      nixosModules.default = {
        imports = [ ./nixos-modules ];
        nixpkgs.overlays = [ self.overlays.default ];
      };
      nixosModules.pgpitr = self.nixosModules.default;

      # The VM tests (need KVM): `nix flake check` or `nix build .#checks.x86_64-linux.<name>`.
      # They get the bare module: runNixOSTest's nodes share this (already overlaid) pkgs
      # read-only, so the nixpkgs.overlays line of nixosModules.default is not allowed there.
      checks = forAllSystems (pkgs:
        import ./nixos-tests { inherit pkgs; module = ./nixos-modules; }
        // { package = pkgs.pgpitr; });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ pkgs.pgpitr ];
          packages = with pkgs; [
            cargo clippy rustfmt rust-analyzer
            postgresql_16 age zstd restic nixfmt-rfc-style
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
