# Evaluates, offline, what flake.nix asks of its rust-overlay input, with rust-overlay's own code
# (the vendored subset of the pinned rev beside this file): its flake's `overlays.<overlay>`,
# the overlay's `rust-bin`, `rust-bin.<function>` and, for `fromRustupToolchainFile`, the
# channel, profile and components the toolchain file asks for, resolved for each system the
# flake builds for by rust-overlay's `selectManifest` and `resolveComponents`.
#
# Only what needs nixpkgs is stood in for: a small `lib` made of builtins, and a `pkgs` whose
# derivation builders (`mk-component-set.nix`, `mk-aggregated.nix`, `fetchurl`) return plain
# attribute sets keyed as the real ones are. A missing overlay, attribute, channel, profile or
# component fails here with rust-overlay's own message.
#
#   nix-instantiate --eval --strict --json .ci/flake/rust-overlay-eval.nix \
#     --arg overlaySrc ./.ci/flake/rust-overlay --arg toolchainFile ./rust-toolchain.toml \
#     --argstr overlay default --argstr function fromRustupToolchainFile \
#     --arg systems '[ "x86_64-linux" ]'
{
  overlaySrc,
  toolchainFile,
  overlay,
  function,
  systems,
}:
let
  inherit (builtins)
    attrNames
    concatMap
    filter
    foldl'
    hasAttr
    listToAttrs
    map
    mapAttrs
    stringLength
    substring
    ;

  lib = rec {
    inherit (builtins)
      any
      attrNames
      attrValues
      concatMap
      concatStringsSep
      elem
      elemAt
      filter
      foldl'
      head
      isString
      length
      listToAttrs
      mapAttrs
      replaceStrings
      substring
      trace
      ;
    flatten = x: if builtins.isList x then concatMap flatten x else [ x ];
    hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
    removeSuffix =
      suffix: s:
      let
        ls = stringLength s;
        lx = stringLength suffix;
      in
      if lx <= ls && substring (ls - lx) lx s == suffix then substring 0 (ls - lx) s else s;
    mapAttrs' = f: set: listToAttrs (map (name: f name set.${name}) (attrNames set));
    mapAttrsToList = f: set: map (name: f name set.${name}) (attrNames set);
    optional = cond: x: if cond then [ x ] else [ ];
    optionalAttrs = cond: set: if cond then set else { };
    unique = foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ];
    makeOverridable =
      f: args:
      f args
      // {
        override = more: makeOverridable f (args // more);
      };
    # Only what rust-overlay's flake.nix names at the top of its outputs; never forced here.
    genAttrs = names: f: listToAttrs (map (n: { name = n; value = f n; }) names);
    systems.flakeExposed = [ ];
    filterAttrs = pred: set: listToAttrs (filter (x: pred x.name x.value) (map (n: { name = n; value = set.${n}; }) (attrNames set)));
    fix = f: let x = f x; in x;
  };

  # Rust targets of the systems keel's flake builds for.
  rustTargets = {
    x86_64-linux = "x86_64-unknown-linux-gnu";
    aarch64-linux = "aarch64-unknown-linux-gnu";
  };

  # The derivation builders rust-overlay calls through `callPackage`, reduced to the keys.
  stubs = {
    "mk-component-set.nix" =
      {
        version,
        platform,
        srcs,
        renames,
      }:
      let
        self = mapAttrs (name: src: { inherit name src platform; }) srcs;
        aliases = mapAttrs (alias: { to }: self.${to} or null) renames;
        merged = self // aliases;
      in
      removeAttrs merged (filter (n: merged.${n} == null) (attrNames merged));
    "mk-aggregated.nix" =
      {
        pname,
        version,
        selectedComponents,
        ...
      }:
      {
        inherit pname version;
        components = map (c: c.name) selectedComponents;
      };
  };

  pkgsFor =
    target:
    let
      platform = {
        rust.rustcTarget = target;
        isLinux = true;
        isDarwin = false;
      };
      base = {
        inherit lib;
        stdenv = {
          hostPlatform = platform;
          targetPlatform = platform;
        };
        fetchurl = args: args;
        callPackage =
          path: _:
          stubs.${baseNameOf (toString path)}
            or (throw "rust-overlay-eval.nix has no stand-in for ${toString path}");
      };
      flake = (import (overlaySrc + "/flake.nix")).outputs {
        self = flake;
        nixpkgs = {
          inherit lib;
        };
      };
      theOverlay =
        if hasAttr overlay flake.overlays then
          flake.overlays.${overlay}
        else
          throw "flake.nix uses rust-overlay.overlays.${overlay}, which the pinned rust-overlay does not have (it has: ${toString (attrNames flake.overlays)})";
      final = base // theOverlay final base;
    in
    final;

  resolve =
    system:
    let
      target =
        rustTargets.${system}
          or (throw "rust-overlay-eval.nix does not know the Rust target of system ${system}: add it to rustTargets");
      pkgs = pkgsFor target;
      rust-bin =
        if pkgs ? rust-bin then pkgs.rust-bin else throw "the pinned rust-overlay's overlay defines no rust-bin";
      fn =
        if hasAttr function rust-bin then
          rust-bin.${function}
        else
          throw "flake.nix uses rust-bin.${function}, which the pinned rust-overlay does not have";
      toolchain = builtins.seq fn (if function == "fromRustupToolchainFile" then fn toolchainFile else null);
    in
    {
      inherit system target;
      components = if toolchain == null then [ ] else toolchain.components;
      version = if toolchain == null then null else toolchain.version;
    };
in
map resolve systems
