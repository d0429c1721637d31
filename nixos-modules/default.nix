# The NixOS module of pgpitr: services.pgpitr.instances.<name>. See docs/nixos.md.
{
  imports = [ ./pgpitr.nix ];
}
