//! `cargo xtask dist`: the Debian package. Builds the release binary (BPF object embedded),
//! has it write its man pages and completions, stages the tree a Debian system expects and
//! builds `target/dist/portcullis_<version>_<arch>.deb` with `dpkg-deb`. `check` (run by
//! `cargo xtask test`) packages the debug binary the same way and installs it into an
//! empty root.

mod check;
mod control;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

pub use check::check;

use crate::util;

/// Where the package installs each file we take from the checkout (besides the binary and
/// what it generates). `/lib/systemd/system` rather than `/usr/lib/…`: Debian 12's systemd
/// and debhelper still install units there.
const FILES: &[(&str, &str, u32)] = &[
    (
        "configs/portcullis.service",
        "lib/systemd/system/portcullis.service",
        0o644,
    ),
    // The configuration a fresh install starts from (a conffile): the smallest valid one.
    ("configs/minimal.toml", "etc/portcullis/portcullis.toml", 0o644),
    // Every section, commented, and the identities file it names beside it.
    (
        "configs/example-full.toml",
        "usr/share/doc/portcullis/examples/example-full.toml",
        0o644,
    ),
    (
        "configs/identities.toml",
        "usr/share/doc/portcullis/examples/identities.toml",
        0o644,
    ),
    (
        "configs/debian/lintian-overrides",
        "usr/share/lintian/overrides/portcullis",
        0o644,
    ),
    ("configs/debian/postinst", "DEBIAN/postinst", 0o755),
    ("configs/debian/prerm", "DEBIAN/prerm", 0o755),
    ("configs/debian/postrm", "DEBIAN/postrm", 0o755),
];

/// Files dpkg keeps the administrator's edits of.
const CONFFILES: &[&str] = &["/etc/portcullis/portcullis.toml"];

/// The completion scripts the binary writes, and where each shell looks for them.
const COMPLETIONS: &[(&str, &str, &str)] = &[
    (
        "bash",
        "portcullis.bash",
        "usr/share/bash-completion/completions/portcullis",
    ),
    (
        "zsh",
        "_portcullis",
        "usr/share/zsh/vendor-completions/_portcullis",
    ),
    (
        "fish",
        "portcullis.fish",
        "usr/share/fish/vendor_completions.d/portcullis.fish",
    ),
];

pub struct Options {
    /// Package this binary instead of building the release one.
    pub binary: Option<PathBuf>,
    /// Where the .deb goes.
    pub out_dir: PathBuf,
    /// `dpkg-deb -Z`: xz for a release; the check packages a debug binary and asks for speed.
    pub compression: &'static str,
}

/// `cargo xtask dist`: the release package, then lintian's verdict on it when installed.
pub fn run(binary: Option<PathBuf>) -> Result<()> {
    let deb = build(&Options {
        binary,
        out_dir: util::target_dir().join("dist"),
        compression: "xz",
    })?;
    println!("{}", deb.display());
    lint(&deb)
}

/// Builds the package; returns its path.
pub fn build(o: &Options) -> Result<PathBuf> {
    let binary = match &o.binary {
        Some(b) => b.clone(),
        None => release_binary()?,
    };
    // The workspace's version (xtask shares it with the daemon), Debian revision 1.
    let version = format!("{}-1", env!("CARGO_PKG_VERSION"));
    let arch = util::output(Command::new("dpkg").arg("--print-architecture"))?;
    let work = util::target_dir()
        .join("dist")
        .join(format!("stage-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let root = work.join("debian/portcullis");
    let result = (|| {
        stage(&root, &binary, &version)?;
        // dpkg-shlibdeps reads the source package's debian/control, so it gets a stub one.
        fs::write(
            work.join("debian/control"),
            "Source: portcullis\n\nPackage: portcullis\nArchitecture: any\n",
        )?;
        let shlibs = shlib_depends(&work)?;
        let meta = control::Package {
            version: &version,
            arch: &arch,
            depends: format!("{shlibs}, nftables"),
            installed_kib: installed_size(&root)?,
        };
        write(&root.join("DEBIAN/control"), &meta.control(), 0o644)?;
        write(
            &root.join("DEBIAN/conffiles"),
            &(CONFFILES.join("\n") + "\n"),
            0o644,
        )?;
        write(&root.join("DEBIAN/md5sums"), &md5sums(&root)?, 0o644)?;
        fs::create_dir_all(&o.out_dir)?;
        let deb = o.out_dir.join(format!("portcullis_{version}_{arch}.deb"));
        util::run(
            Command::new("dpkg-deb")
                .args(["--build", "--root-owner-group", "-Z", o.compression])
                .arg(&root)
                .arg(&deb)
                .stdout(std::process::Stdio::null()),
        )?;
        Ok(deb)
    })();
    let _ = fs::remove_dir_all(&work);
    result
}

/// `cargo build --release` of the daemon, after the BPF object it embeds (unless one is
/// given in PORTCULLIS_BPF_OBJECT, which the build then embeds as it is).
fn release_binary() -> Result<PathBuf> {
    if std::env::var_os("PORTCULLIS_BPF_OBJECT").is_none() {
        crate::build::ebpf()?;
    }
    let object = std::env::var_os("PORTCULLIS_BPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bpf/bpfel-unknown-none/release/portcullis-ebpf"));
    // Without it the binary would build and install, and fail only at `run`.
    if fs::metadata(&object).map(|m| m.len()).unwrap_or(0) == 0 {
        bail!(
            "no BPF object at {}: the package would not steer anything",
            object.display()
        );
    }
    util::cargo(&[
        "build",
        "--release",
        "--locked",
        "-p",
        "portcullis",
        "--bin",
        "portcullis",
    ])?;
    Ok(util::target_dir().join("release/portcullis"))
}

/// The file tree as installed, under `root`.
fn stage(root: &Path, binary: &Path, version: &str) -> Result<()> {
    let bin = root.join("usr/bin/portcullis");
    fs::create_dir_all(bin.parent().unwrap())?;
    // Stripped as dh_strip does (symbols and debug information stay out of the package),
    // straight into the tree: a debug binary is 150 MiB, not worth copying first.
    util::run(
        Command::new("strip")
            .args([
                "--remove-section=.comment",
                "--remove-section=.note",
                "--strip-unneeded",
                "-o",
            ])
            .arg(&bin)
            .arg(binary),
    )?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    for (src, dst, mode) in FILES {
        let dst = root.join(dst);
        fs::create_dir_all(dst.parent().unwrap())?;
        fs::copy(src, &dst).with_context(|| format!("copy {src}"))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(*mode))?;
    }
    let doc = root.join("usr/share/doc/portcullis");
    write(&doc.join("copyright"), &control::copyright()?, 0o644)?;
    write(
        &doc.join("changelog.Debian"),
        &control::changelog(version)?,
        0o644,
    )?;
    gzip(&doc.join("changelog.Debian"))?;
    fs::copy("README.md", doc.join("README.md"))?;
    gzip(&doc.join("README.md"))?;

    // Pages and completions come from the binary being packaged, so they match it.
    let gen = root.parent().unwrap().join("generated");
    util::run(Command::new(&bin).args(["generate", "man"]).arg(gen.join("man")))?;
    let man1 = root.join("usr/share/man/man1");
    fs::create_dir_all(&man1)?;
    for page in fs::read_dir(gen.join("man"))? {
        let page = page?.path();
        let dst = man1.join(page.file_name().unwrap());
        fs::copy(&page, &dst)?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o644))?;
        gzip(&dst)?;
    }
    for (shell, written, dst) in COMPLETIONS {
        let out = gen.join("completions");
        util::run(
            Command::new(&bin)
                .args(["generate", "completions", shell])
                .arg(&out)
                .stdout(std::process::Stdio::null()),
        )?;
        let dst = root.join(dst);
        fs::create_dir_all(dst.parent().unwrap())?;
        fs::copy(out.join(written), &dst)?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o644))?;
    }
    // Directories as dpkg expects them whatever the umask.
    for dir in walk(root)?.into_iter().filter(|p| p.is_dir()) {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn write(path: &Path, body: &str, mode: u32) -> Result<()> {
    fs::create_dir_all(path.parent().unwrap())?;
    fs::write(path, body).with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `gzip -9n` in place, as Debian compresses documentation (no name or time inside: the
/// same input gives the same bytes).
fn gzip(path: &Path) -> Result<()> {
    util::run(Command::new("gzip").args(["-9nf"]).arg(path))
}

/// The libraries the binary links, as dpkg-shlibdeps names their packages and versions.
fn shlib_depends(work: &Path) -> Result<String> {
    let out = util::output(
        Command::new("dpkg-shlibdeps")
            .args(["-O", "-e", "debian/portcullis/usr/bin/portcullis"])
            .current_dir(work),
    )?;
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out}"))
}

/// Every path under `dir`, depth first, `DEBIAN/` included.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The regular files the package installs (not `DEBIAN/`), relative to `root`.
fn payload(root: &Path) -> Result<Vec<PathBuf>> {
    Ok(walk(root)?
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
        .filter(|p| !p.starts_with("DEBIAN"))
        .collect())
}

/// `Installed-Size` as dpkg-gencontrol counts it: KiB per file rounded up, one per directory.
fn installed_size(root: &Path) -> Result<u64> {
    let mut kib = 0;
    for p in walk(root)? {
        if p.strip_prefix(root).unwrap().starts_with("DEBIAN") {
            continue;
        }
        kib += match p.is_file() {
            true => fs::metadata(&p)?.len().div_ceil(1024),
            false => 1,
        };
    }
    Ok(kib)
}

/// `DEBIAN/md5sums`, which `dpkg --verify` and debsums check installed files against.
fn md5sums(root: &Path) -> Result<String> {
    let files = payload(root)?;
    let out = Command::new("md5sum")
        .args(&files)
        .current_dir(root)
        .output()
        .context("run md5sum")?;
    if !out.status.success() {
        bail!("md5sum: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Debian's linter, when installed (`apt-get install lintian`: it is not part of `cargo
/// xtask setup`, which would pull ~130 packages into every run). Errors fail the build;
/// warnings are printed.
fn lint(deb: &Path) -> Result<()> {
    if !Path::new("/usr/bin/lintian").exists() {
        eprintln!("xtask dist: lintian is not installed; `apt-get install lintian` to check the package");
        return Ok(());
    }
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .context("run lintian")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if text.lines().any(|l| l.starts_with("E: ")) {
        bail!("lintian found errors in {}", deb.display());
    }
    Ok(())
}
