[
  { clippy = "clippy-preview"; miri = "miri-preview"; rls = "rls-preview"; rustfmt = "rustfmt-preview"; }
  { clippy = "clippy-preview"; rls = "rls-preview"; rustfmt = "rustfmt-preview"; }
  { rls = "rls-preview"; }
  { clippy = "clippy-preview"; miri = "miri-preview"; rls = "rls-preview"; rust-analyzer = "rust-analyzer-preview"; rustfmt = "rustfmt-preview"; }
  { clippy = "clippy-preview"; miri = "miri-preview"; rls = "rls-preview"; rust-analyzer = "rust-analyzer-preview"; rust-docs-json = "rust-docs-json-preview"; rustfmt = "rustfmt-preview"; }
  { clippy = "clippy-preview"; llvm-tools = "llvm-tools-preview"; miri = "miri-preview"; rls = "rls-preview"; rust-analyzer = "rust-analyzer-preview"; rust-docs-json = "rust-docs-json-preview"; rustfmt = "rustfmt-preview"; }
  { llvm-tools = "llvm-tools-preview"; miri = "miri-preview"; rls = "rls-preview"; rust-analyzer = "rust-analyzer-preview"; rust-docs-json = "rust-docs-json-preview"; }
  { clippy = "clippy-preview"; llvm-tools = "llvm-tools-preview"; miri = "miri-preview"; rls = "rls-preview"; rust-analyzer = "rust-analyzer-preview"; rust-docs-json = "rust-docs-json-preview"; rustc-codegen-cranelift = "rustc-codegen-cranelift-preview"; rustfmt = "rustfmt-preview"; }
  { clippy = "clippy-preview"; llvm-bitcode-linker = "llvm-bitcode-linker-preview"; llvm-tools = "llvm-tools-preview"; miri = "miri-preview"; rls = "rls-preview"; rust-analyzer = "rust-analyzer-preview"; rust-docs-json = "rust-docs-json-preview"; rustc-codegen-cranelift = "rustc-codegen-cranelift-preview"; rustfmt = "rustfmt-preview"; }
  { clippy = "clippy-preview"; llvm-bitcode-linker = "llvm-bitcode-linker-preview"; llvm-tools = "llvm-tools-preview"; miri = "miri-preview"; rust-analyzer = "rust-analyzer-preview"; rust-docs-json = "rust-docs-json-preview"; rustc-codegen-cranelift = "rustc-codegen-cranelift-preview"; rustfmt = "rustfmt-preview"; }
  { clippy = "clippy-preview"; gcc-x86_64-unknown-linux-gnu = "gcc-x86_64-unknown-linux-gnu-preview"; llvm-bitcode-linker = "llvm-bitcode-linker-preview"; llvm-tools = "llvm-tools-preview"; miri = "miri-preview"; rust-analyzer = "rust-analyzer-preview"; rust-docs-json = "rust-docs-json-preview"; rustc-codegen-cranelift = "rustc-codegen-cranelift-preview"; rustc-codegen-gcc = "rustc-codegen-gcc-preview"; rustfmt = "rustfmt-preview"; }
]
