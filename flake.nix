{
  description = "keel: reproducible, crash-proof GPU training environments";

  # Needs Nix 2.18 or newer (nixpkgs 26.05 refuses to evaluate with an older one: lib/minver.nix)
  # with the `nix-command` and `flakes` features. `.ci/flake-check` says what CI checks offline.
  inputs = {
    nixpkgs.url = "github:nixos/nixpkgs/nixos-26.05";
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      rust-overlay,
    }:
    let
      inherit (nixpkgs) lib;

      # CUDA from nixpkgs is built for Linux only.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];

      # One CUDA release for everyone: keel's `cuda` feature (candle 0.11's CUDA backend, cudarc
      # 0.19, which supports CUDA 11.4 to 13.x) compiles its kernels with this set's nvcc and
      # links its libraries. 12.9 is the newest CUDA 12 release nixpkgs carries.
      cudaFor = pkgs: pkgs.cudaPackages_12_9;

      # The CUDA pieces keel builds with: nvcc and the CUDA runtime headers (candle's kernels),
      # NVRTC, cuBLAS(Lt) and cuRAND (cudarc links them), and CCCL (headers nvcc needs).
      cudaComponents = cuda: [
        cuda.cuda_nvcc
        cuda.cuda_cudart
        cuda.cuda_cccl
        cuda.cuda_nvrtc
        cuda.libcublas
        cuda.libcurand
      ];

      # Unfree: the packages above are NVIDIA's binary redistributables under the CUDA EULA.
      # Exactly these names are allowed and nothing else unfree is. NCCL is not among them: in
      # nixpkgs it is built from its BSD-3 source (with the nvcc above). cuDNN is not used by
      # any keel feature and is not in the shell.
      unfreeAllowed = [
        "cuda_nvcc"
        "cuda_cudart"
        "cuda_cccl"
        "cuda_nvrtc"
        "libcublas"
        "libcurand"
      ];

      forAllSystems =
        f:
        lib.genAttrs systems (
          system:
          f (
            import nixpkgs {
              inherit system;
              overlays = [ rust-overlay.overlays.default ];
              config.allowUnfreePredicate = pkg: builtins.elem (lib.getName pkg) unfreeAllowed;
            }
          )
        );

      # The same toolchain as `cargo` outside Nix: rust-toolchain.toml is the one source.
      toolchainFor = pkgs: pkgs.rust-bin.fromRustupToolchainFile ./rust-toolchain.toml;
      rustPlatformFor =
        pkgs:
        let
          toolchain = toolchainFor pkgs;
        in
        pkgs.makeRustPlatform {
          cargo = toolchain;
          rustc = toolchain;
        };

      # The `mpi` feature links the system MPI: the `mpi` crate finds Open MPI through `mpicc`
      # (pkg-config as a fallback) and generates its bindings with bindgen, which needs libclang.
      mpiBuildInputs = pkgs: [
        pkgs.openmpi
        pkgs.pkg-config
        pkgs.rustPlatform.bindgenHook
      ];
      mpiEnv = pkgs: {
        MPICC = "${lib.getDev pkgs.openmpi}/bin/mpicc";
        LIBCLANG_PATH = "${lib.getLib pkgs.llvmPackages.libclang}/lib";
      };

      # `keel` (the keel-cli crate) with the given cargo features.
      keelFor =
        pkgs: features:
        let
          withMpi = builtins.elem "mpi" features;
        in
        (rustPlatformFor pkgs).buildRustPackage (
          {
            pname = if withMpi then "keel-mpi" else "keel";
            version = (lib.importTOML ./Cargo.toml).workspace.package.version;
            # The sources cargo builds from: the test data, CI scripts and docs stay out, so that
            # changing them does not rebuild keel.
            src = lib.cleanSourceWith {
              src = lib.cleanSource ./.;
              filter =
                path: _type:
                !builtins.elem (lib.removePrefix "${toString ./.}/" (toString path)) [
                  ".ci"
                  "docs"
                  "test-data"
                ];
            };
            # Cargo.lock has no git dependencies: every crate comes from crates.io and is checked
            # against the checksum the lock records, so no `outputHashes` are needed. A git
            # dependency added later fails this build until its hash is given in
            # `cargoLock.outputHashes`.
            cargoLock.lockFile = ./Cargo.lock;
            cargoBuildFlags = [
              "--package"
              "keel-cli"
            ];
            buildFeatures = features;
            # aws-lc-sys (rustls' crypto, through object_store and reqwest) compiles its C
            # sources with cc, falling back to CMake; CMake is here for that build script only.
            nativeBuildInputs = [ pkgs.cmake ] ++ lib.optionals withMpi (mpiBuildInputs pkgs);
            dontUseCmakeConfigure = true;
            buildInputs = lib.optionals withMpi [ pkgs.openmpi ];
            # The test suite reads the shared corpus beside the repository (see README).
            doCheck = false;
            meta.mainProgram = "keel";
          }
          // lib.optionalAttrs withMpi (mpiEnv pkgs)
        );

      # The S3-compatible server keel-ckpt's tests run on loopback; not in nixpkgs. 0.14.1 is the
      # newest that builds with the pinned toolchain (0.15 needs Rust 1.96), as in .ci/run. The
      # crate's own Cargo.lock (what `cargo install --locked` uses) is kept beside the check.
      s3sFsFor =
        pkgs:
        (rustPlatformFor pkgs).buildRustPackage rec {
          pname = "s3s-fs";
          version = "0.14.1";
          src = pkgs.fetchCrate {
            inherit pname version;
            hash = "sha256-sCNMLBR7rGcKvm9bnXhBPdVSRxbBaWef/5SRsBQd4Y8=";
          };
          cargoLock.lockFile = ./.ci/flake/s3s-fs-0.14.1.Cargo.lock;
          buildFeatures = [ "binary" ];
          # aws-lc-sys (rustls' crypto), as in keel's own build.
          nativeBuildInputs = [ pkgs.cmake ];
          dontUseCmakeConfigure = true;
          # Its tests talk to a live AWS endpoint.
          doCheck = false;
          meta.mainProgram = "s3s-fs";
        };
    in
    {
      packages = forAllSystems (pkgs: {
        default = keelFor pkgs [ ];
        keel-mpi = keelFor pkgs [ "mpi" ];
        s3s-fs = s3sFsFor pkgs;
      });

      devShells = forAllSystems (
        pkgs:
        let
          cuda = cudaFor pkgs;
          # One CUDA root (bin, include, lib, lib/stubs) for CUDA_PATH, as cudarc and candle's
          # kernel build expect, made of exactly the components above plus NCCL (nixpkgs' nvcc
          # brings the host compiler it supports). The driver stub stays only as
          # lib/stubs/libcuda.so, for linking: with no libcuda.so.1 beside it, and no setup hooks
          # propagating the stub output into the shell, a binary built here cannot load the
          # stub at run time in place of the host's driver.
          cudaRoot = pkgs.symlinkJoin {
            name = "keel-cuda-${cuda.cudaMajorMinorVersion}";
            paths = lib.concatMap (p: p.all) (cudaComponents cuda ++ [ cuda.nccl ]);
            postBuild = ''
              rm -rf "$out"/nix-support
              rm -f "$out"/lib/libcuda.so* "$out"/lib/stubs/libcuda.so.*
            '';
          };
          # The checkpoint round-trip test reads keel's files with safetensors and numpy.
          python = pkgs.python3.withPackages (ps: [
            ps.safetensors
            ps.numpy
          ]);
        in
        {
          default = pkgs.mkShell (
            {
              packages = [
                (toolchainFor pkgs)
                cudaRoot
                python
                pkgs.uv
                (s3sFsFor pkgs)
                pkgs.b3sum
              ]
              ++ mpiBuildInputs pkgs;
              CUDA_PATH = "${cudaRoot}";
              CUDA_ROOT = "${cudaRoot}";
              NVCC_PREPEND_FLAGS = "-I${cudaRoot}/include";
              shellHook = ''
                # libcuda.so.1 belongs to the host's driver, not to the toolkit: NixOS exposes it
                # in /run/opengl-driver/lib; elsewhere point KEEL_DRIVER_LIB at a folder holding
                # only the driver's libraries (see README), or run keel through nixGL.
                for driver_lib in /run/opengl-driver/lib "''${KEEL_DRIVER_LIB:-}"; do
                  if [ -n "$driver_lib" ] && [ -d "$driver_lib" ]; then
                    export LD_LIBRARY_PATH="$driver_lib''${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
                  fi
                done
              '';
            }
            // mpiEnv pkgs
          );
        }
      );
    };
}
