//! Builds the guest (`../guest`, QuickJS for `wasm32-wasip1`) and hands its path to the
//! crate as `ENCLAVE_GUEST_WASM`.
//!
//! The guest has its own target directory (`target/guest`, or `ENCLAVE_GUEST_TARGET_DIR`),
//! shared by every profile of the host build, so it is compiled once and rebuilt only
//! when its sources change. A
//! nested cargo with the outer target directory would deadlock on cargo's lock.
//!
//! The C part of QuickJS is compiled with Debian's clang and wasi-libc (no wasi-sdk
//! download): Debian's clang looks for WASI headers under the triple `wasm32-wasi`, so a
//! two-symlink sysroot maps `wasm32-wasip1` onto them.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_SOURCES: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "src",
    ".cargo/config.toml",
    "vendor",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let guest_dir = manifest_dir.join("../guest");
    for source in GUEST_SOURCES {
        println!(
            "cargo:rerun-if-changed={}",
            guest_dir.join(source).display()
        );
    }
    // The ABI crate the guest shares with this one.
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../abi").display()
    );
    println!("cargo:rerun-if-env-changed=ENCLAVE_GUEST_CC");
    println!("cargo:rerun-if-env-changed=ENCLAVE_WASI_LIBC");

    // Builds outside the workspace's target directory (the fuzz targets') can share its
    // guest instead of compiling their own.
    println!("cargo:rerun-if-env-changed=ENCLAVE_GUEST_TARGET_DIR");
    let target_dir = env::var_os("ENCLAVE_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_target_dir().join("guest"));
    let sysroot = target_dir.join("wasi-sysroot");
    let wasi_libc = env::var("ENCLAVE_WASI_LIBC").unwrap_or_else(|_| "/usr".into());
    make_sysroot(&sysroot, Path::new(&wasi_libc));

    let cc = env::var("ENCLAVE_GUEST_CC").unwrap_or_else(|_| "clang-19".into());
    let ar = cc.replace("clang", "llvm-ar");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Nothing of the outer build may leak in: its flags, wrappers (clippy) and jobserver
    // are for the host target.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(key);
        }
    }
    let status = cmd
        .current_dir(&guest_dir)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip1",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RQUICKJS_SYS_NO_WASI_SDK", "1")
        .env("CC_wasm32_wasip1", &cc)
        .env("AR_wasm32_wasip1", &ar)
        .env(
            "CFLAGS_wasm32_wasip1",
            // bulk-memory: memcpy/memset compile to single wasm instructions, which
            // wasmtime turns into native memmove/memset (QuickJS copies a lot).
            format!("--sysroot={} -O3 -mbulk-memory", sysroot.display()),
        )
        .status()
        .expect("running cargo for the guest");
    assert!(
        status.success(),
        "building the guest failed; it needs `rustup target add wasm32-wasip1` and \
         `apt-get install clang-19 llvm-19 wasi-libc` (see README.md)"
    );
    let wasm = target_dir.join("wasm32-wasip1/release/enclave_guest.wasm");
    println!("cargo:rustc-env=ENCLAVE_GUEST_WASM={}", wasm.display());
}

/// `OUT_DIR` is `<target>/<profile>/build/<pkg>-<hash>/out`.
fn workspace_target_dir() -> PathBuf {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets it"));
    out.ancestors()
        .nth(4)
        .expect("OUT_DIR is inside the target directory")
        .to_path_buf()
}

fn make_sysroot(sysroot: &Path, wasi_libc: &Path) {
    let lib = sysroot.join("lib");
    std::fs::create_dir_all(&lib).expect("creating the guest sysroot");
    link(
        &wasi_libc.join("include/wasm32-wasi"),
        &sysroot.join("include"),
    );
    link(
        &wasi_libc.join("lib/wasm32-wasi"),
        &lib.join("wasm32-wasip1"),
    );
}

fn link(target: &Path, link: &Path) {
    if std::fs::read_link(link).ok().as_deref() == Some(target) {
        return;
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).expect("linking the guest sysroot");
}
