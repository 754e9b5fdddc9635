{
  description = "keel: reproducible, crash-proof GPU training environments";

  inputs = {
    nixpkgs.url = "github:nixos/nixpkgs/nixos-25.11";
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    { self, nixpkgs, rust-overlay }:
    let
      # CUDA from nixpkgs is built for Linux only.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems =
        f:
        nixpkgs.lib.genAttrs systems (
          system:
          f (
            import nixpkgs {
              inherit system;
              overlays = [ rust-overlay.overlays.default ];
              # The CUDA toolkit is unfree.
              config.allowUnfree = true;
            }
          )
        );
      # The same toolchain as `cargo` outside Nix: rust-toolchain.toml is the one source.
      toolchainFor = pkgs: pkgs.rust-bin.fromRustupToolchainFile ./rust-toolchain.toml;
      # One CUDA release for everyone; keel's `cuda` feature builds against it.
      cudaFor = pkgs: pkgs.cudaPackages_12_8;
    in
    {
      packages = forAllSystems (
        pkgs:
        let
          toolchain = toolchainFor pkgs;
          rustPlatform = pkgs.makeRustPlatform {
            cargo = toolchain;
            rustc = toolchain;
          };
        in
        {
          default = rustPlatform.buildRustPackage {
            pname = "keel";
            version = "0.1.0";
            src = pkgs.lib.cleanSource ./.;
            cargoLock.lockFile = ./Cargo.lock;
            cargoBuildFlags = [
              "--package"
              "keel-cli"
            ];
            # The test suite reads the shared corpus beside the repository (see README).
            doCheck = false;
            meta.mainProgram = "keel";
          };
        }
      );

      devShells = forAllSystems (
        pkgs:
        let
          cuda = cudaFor pkgs;
        in
        {
          default = pkgs.mkShell {
            packages = [
              (toolchainFor pkgs)
              cuda.cudatoolkit
              cuda.cudnn
              pkgs.pkg-config
              pkgs.b3sum
              pkgs.python3
            ];
            CUDA_PATH = "${cuda.cudatoolkit}";
            CUDA_ROOT = "${cuda.cudatoolkit}";
            shellHook = ''
              # libcuda.so belongs to the host's driver, not to the toolkit: NixOS exposes it in
              # /run/opengl-driver/lib; elsewhere run keel through nixGL (see README).
              if [ -d /run/opengl-driver/lib ]; then
                export LD_LIBRARY_PATH="/run/opengl-driver/lib''${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
              fi
            '';
          };
        }
      );
    };
}
