//! `cargo xtask dist`: what an operator installs, built into `<target>/dist/`.
//!
//! - `intercept-<version>-<arch>`: the release binary for x86_64 and for aarch64 (Graviton),
//!   linked statically against musl, so it needs no libc from the host (the ECS agent's container
//!   runs the CNI plugin with the host's libraries, whatever their glibc). Both embed the same
//!   eBPF object: it is checked here.
//! - `intercept-<version>-<arch>.tar.gz`: the binary, its `aws-appmesh` and `intercept-cni` links,
//!   the deploy examples (the systemd units among them), the seed guide's task definitions, the
//!   licences and the README.
//! - `intercept-<version>-1.<arch>.rpm` (Amazon Linux 2023) and `intercept_<version>-1_<arch>.deb`:
//!   the same files in the host's places (see [`package_layout`]); the systemd units are
//!   installed, not enabled.
//! - `intercept-<version>-<arch>.cdx.json`: the binary's CycloneDX SBOM, from Cargo.lock (see
//!   [`cyclonedx`]).
//! - `SHA256SUMS` over all of them.
//!
//! The packages are written with the libraries packaging tools are built on (`rpm`, the crate
//! cargo-generate-rpm uses; `tar` and `ar` for the .deb), from one list of entries per layout,
//! so that the tarball, the RPM and the .deb cannot disagree about what they hold.

use std::{
    fs,
    io::{self, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};
use cargo_metadata::Message;
use sha2::{Digest as _, Sha256};

use crate::{Workspace, display, setup, step};

/// A target architecture of the binaries, the packages and the images.
#[derive(PartialEq)]
pub struct Arch {
    /// Rust's, the kernel's and the RPM's name: x86_64, aarch64.
    pub name: &'static str,
    /// The Rust target: static, musl.
    pub triple: &'static str,
    /// Debian's and the container engines' name: amd64, arm64.
    pub debian: &'static str,
    /// The ELF `e_machine` of its executables.
    machine: u16,
}

pub const X86_64: Arch = Arch { name: "x86_64", triple: "x86_64-unknown-linux-musl", debian: "amd64", machine: 62 };
pub const AARCH64: Arch = Arch { name: "aarch64", triple: "aarch64-unknown-linux-musl", debian: "arm64", machine: 183 };
pub const ARCHES: [&Arch; 2] = [&X86_64, &AARCH64];

/// The RPM's and the .deb's release of a version: the first packaging of each.
const PACKAGE_RELEASE: &str = "1";
const SUMMARY: &str = "Transparent TCP/DNS interception into an ECS task's Envoy sidecar (App Mesh proxyConfiguration)";
const DESCRIPTION: &str = "intercept steers an ECS task's TCP and DNS traffic into its sidecar proxy, configured like \
an ECS task definition's proxyConfiguration (APPMESH), with eBPF, iptables or nftables. It runs as a task's \
init container, as a host daemon (systemd units included, not enabled) and as the ECS agent's aws-appmesh \
CNI plugin (/usr/lib/intercept/cni). Statically linked: it needs no libc from the host.";
/// The CNI plugin directory, inside `/usr/lib` because the ECS agent's container mounts the
/// host's `/usr/lib` (and not `/usr/bin`): the binary itself lives there, and `/usr/bin/intercept`
/// links to it (docs/deploy-ecs.md).
const CNI_DIR: &str = "usr/lib/intercept/cni";
/// The names the binary answers to as a CNI plugin.
const CNI_NAMES: [&str; 2] = ["aws-appmesh", "intercept-cni"];
/// The systemd units of the host daemon, from deploy/.
const UNITS: [&str; 2] = ["intercept.service", "intercept-docker.service"];
/// The licence files and the names they are installed under (the image's names too).
pub const LICENSES: [(&str, &str); 3] =
    [("LICENSE", "LICENSE"), ("ebpf/LICENSE-MIT", "LICENSE-ebpf-MIT"), ("ebpf/LICENSE-GPL2", "LICENSE-ebpf-GPL2")];

pub fn run(ws: &Workspace) -> Result<()> {
    setup::run(ws)?;
    let version = ws.agent_package()?.version.to_string();
    let binaries = build_static(ws, &ARCHES)?;

    step("dist: the archives, packages and SBOMs");
    let dist = ws.target_dir.join("dist");
    if dist.exists() {
        fs::remove_dir_all(&dist).with_context(|| format!("remove {}", dist.display()))?;
    }
    fs::create_dir_all(&dist).with_context(|| format!("create {}", dist.display()))?;
    let mtime = source_date(ws)?;
    for (arch, binary) in ARCHES.iter().zip(&binaries) {
        let stem = format!("intercept-{version}-{}", arch.name);
        fs::copy(binary, dist.join(&stem)).with_context(|| format!("copy {}", binary.display()))?;

        let tarball = tarball_layout(ws, &stem, binary)?;
        write_tar_gz(&dist.join(format!("{stem}.tar.gz")), &tarball, mtime)?;

        let package = package_layout(ws, binary)?;
        write_deb(
            &dist.join(format!("intercept_{version}-{PACKAGE_RELEASE}_{}.deb", arch.debian)),
            &package,
            arch,
            &version,
            mtime,
        )?;
        write_rpm(
            &dist.join(format!("intercept-{version}-{PACKAGE_RELEASE}.{}.rpm", arch.name)),
            &package,
            arch,
            &version,
            mtime,
        )?;

        sbom(ws, arch, &dist.join(format!("{stem}.cdx.json")))?;
    }
    write_sha256sums(&dist)?;
    for entry in sorted_files(&dist)? {
        println!("    {}", entry.display());
    }
    Ok(())
}

/// Builds the static release binaries of `arches` in one cargo run and checks each: an
/// executable of its architecture with no program interpreter (no libc from the host), all
/// embedding the same eBPF object. Returns their paths, in the order of `arches`.
pub fn build_static(ws: &Workspace, arches: &[&Arch]) -> Result<Vec<PathBuf>> {
    step(&format!(
        "dist: the static release binaries ({})",
        arches.iter().map(|a| a.triple).collect::<Vec<_>>().join(", ")
    ));
    let agent = ws.agent_package()?;
    let mut build = ws.cargo();
    build.args(["build", "--release", "--package", "intercept", "--bin", "intercept"]);
    build.arg("--message-format=json-render-diagnostics");
    for arch in arches {
        build.args(["--target", arch.triple]);
        // Rust's own lld and musl's self-contained start files: no C cross toolchain.
        build.env(format!("CARGO_TARGET_{}_LINKER", arch.triple.to_uppercase().replace('-', "_")), "rust-lld");
    }
    println!("    $ {}", display(&build));
    let mut child = build.stdout(Stdio::piped()).spawn().with_context(|| format!("run {}", display(&build)))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut objects = Vec::new();
    for message in Message::parse_stream(BufReader::new(stdout)) {
        // The agent's build script leaves the eBPF object it embeds in its OUT_DIR.
        if let Message::BuildScriptExecuted(script) = message.context("read cargo's messages")?
            && script.package_id == agent.id
        {
            let object = script.out_dir.join("intercept");
            objects.push((script.out_dir.to_string(), fs::read(&object).with_context(|| format!("read {object}"))?));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{} exited with {status}", display(&build));
    }

    let mut binaries = Vec::new();
    for arch in arches {
        let Some((_, object)) = objects.iter().find(|(out_dir, _)| out_dir.contains(&format!("/{}/", arch.triple)))
        else {
            bail!("cargo reported no run of intercept's build script for {}", arch.triple)
        };
        let (_, first) = &objects[0];
        ensure!(object == first, "the {} binary embeds another eBPF object than the {} one", arch.name, arches[0].name);
        let binary = ws.target_dir.join(arch.triple).join("release").join("intercept");
        let bytes = fs::read(&binary).with_context(|| format!("read {}", binary.display()))?;
        let elf = Elf::parse(&bytes).with_context(|| format!("{}", binary.display()))?;
        ensure!(
            elf.machine == arch.machine,
            "{} is for ELF machine {}, not {}",
            binary.display(),
            elf.machine,
            arch.name
        );
        ensure!(!elf.interpreter, "{} asks for a program interpreter: it is not statically linked", binary.display());
        println!("    {}: {}, static, eBPF object of {} bytes", binary.display(), arch.name, object.len());
        binaries.push(binary);
    }
    Ok(binaries)
}

/// What matters here of an ELF executable: its machine, and whether it names a program
/// interpreter (the dynamic loader, which would then load a libc of the host's).
#[derive(Debug, PartialEq)]
struct Elf {
    machine: u16,
    interpreter: bool,
}

impl Elf {
    fn parse(bytes: &[u8]) -> Result<Elf> {
        const PT_INTERP: u32 = 3;
        let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let u64_at = |at: usize| bytes.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        ensure!(bytes.starts_with(b"\x7fELF\x02\x01"), "not a 64-bit little-endian ELF file");
        let truncated = || anyhow::anyhow!("truncated ELF header");
        let machine = u16_at(18).ok_or_else(truncated)?;
        let phoff = usize::try_from(u64_at(32).ok_or_else(truncated)?)?;
        let phentsize = usize::from(u16_at(54).ok_or_else(truncated)?);
        let phnum = usize::from(u16_at(56).ok_or_else(truncated)?);
        let mut interpreter = false;
        for i in 0..phnum {
            let p_type = u32_at(phoff + i * phentsize).context("truncated program header table")?;
            interpreter |= p_type == PT_INTERP;
        }
        Ok(Elf { machine, interpreter })
    }
}

/// An entry of an archive or a package.
#[derive(Debug, PartialEq)]
struct Entry {
    /// Relative, `/`-separated.
    path: String,
    kind: Kind,
}

#[derive(Debug, PartialEq)]
enum Kind {
    File {
        source: PathBuf,
        mode: u32,
    },
    Symlink(String),
    /// A directory the package owns (archives also get the parents of their entries).
    Dir,
}

fn file(path: impl Into<String>, source: impl Into<PathBuf>, mode: u32) -> Entry {
    Entry { path: path.into(), kind: Kind::File { source: source.into(), mode } }
}

fn symlink(path: impl Into<String>, target: impl Into<String>) -> Entry {
    Entry { path: path.into(), kind: Kind::Symlink(target.into()) }
}

fn dir(path: impl Into<String>) -> Entry {
    Entry { path: path.into(), kind: Kind::Dir }
}

/// The tarball: one directory `stem` with the binary and its CNI names beside it, the README, the
/// licences, deploy/ and examples/ as in the repository.
fn tarball_layout(ws: &Workspace, stem: &str, binary: &Path) -> Result<Vec<Entry>> {
    let mut entries = vec![file(format!("{stem}/intercept"), binary, 0o755)];
    entries.extend(CNI_NAMES.map(|name| symlink(format!("{stem}/{name}"), "intercept")));
    entries.push(file(format!("{stem}/README.md"), ws.root.join("README.md"), 0o644));
    entries.extend(LICENSES.map(|(from, to)| file(format!("{stem}/{to}"), ws.root.join(from), 0o644)));
    for tree in ["deploy", "examples"] {
        entries.extend(tree_files(&ws.root, tree, &format!("{stem}/{tree}"))?);
    }
    Ok(entries)
}

/// The RPM's and the .deb's files: the binary in the CNI plugin directory with its CNI names
/// beside it and `/usr/bin/intercept` linking to it, the systemd units (installed, not enabled),
/// and the README, licences and deploy examples in `/usr/share/doc/intercept`.
fn package_layout(ws: &Workspace, binary: &Path) -> Result<Vec<Entry>> {
    let doc = "usr/share/doc/intercept";
    let mut entries = vec![dir("usr/lib/intercept"), dir(CNI_DIR), file(format!("{CNI_DIR}/intercept"), binary, 0o755)];
    entries.extend(CNI_NAMES.map(|name| symlink(format!("{CNI_DIR}/{name}"), "intercept")));
    entries.push(symlink("usr/bin/intercept", "../lib/intercept/cni/intercept"));
    entries.extend(
        UNITS.map(|unit| file(format!("usr/lib/systemd/system/{unit}"), ws.root.join("deploy").join(unit), 0o644)),
    );
    entries.push(dir(doc));
    entries.push(file(format!("{doc}/README.md"), ws.root.join("README.md"), 0o644));
    entries.extend(LICENSES.map(|(from, to)| file(format!("{doc}/{to}"), ws.root.join(from), 0o644)));
    for tree in ["deploy", "examples"] {
        entries.push(dir(format!("{doc}/{tree}")));
        entries.extend(tree_files(&ws.root, tree, &format!("{doc}/{tree}"))?);
    }
    Ok(entries)
}

/// The files under `root/tree` (subdirectories' too), as entries under `prefix`, sorted.
fn tree_files(root: &Path, tree: &str, prefix: &str) -> Result<Vec<Entry>> {
    let base = root.join(tree);
    let mut entries = Vec::new();
    for path in sorted_files(&base)? {
        let relative = path.strip_prefix(&base)?.to_str().context("a non-UTF-8 file name")?.to_owned();
        entries.push(file(format!("{prefix}/{relative}"), path, 0o644));
    }
    Ok(entries)
}

/// Every file under `dir`, recursively, sorted.
fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() { pending.push(path) } else { files.push(path) }
        }
    }
    files.sort();
    Ok(files)
}

/// The time every archived file is dated: SOURCE_DATE_EPOCH, else the last commit's, so that
/// the same commit gives the same archives.
fn source_date(ws: &Workspace) -> Result<u64> {
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        return epoch.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={epoch:?} is not a number of seconds"));
    }
    let out = Command::new("git").args(["log", "-1", "--format=%ct"]).current_dir(&ws.root).output();
    match out {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?),
        _ => bail!("not a git checkout: set SOURCE_DATE_EPOCH to the time the archives' files should carry"),
    }
}

/// A tar archive of `entries`, with the directories above them, owned by root.
fn tar_of<W: io::Write>(entries: &[Entry], prefix: &str, mtime: u64, out: W) -> Result<W> {
    let mut tar = tar::Builder::new(out);
    // Every directory before what it holds (dpkg does not make missing parents): the ones
    // owned, and the parents of every entry, in order.
    let mut dirs = std::collections::BTreeSet::new();
    for entry in entries {
        if entry.kind == Kind::Dir {
            dirs.insert(PathBuf::from(&entry.path));
        }
        let mut parent = Path::new(&entry.path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_path_buf());
            parent = p.parent();
        }
    }
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(mtime);
        header.set_uid(0);
        header.set_gid(0);
        header
    };
    let dir_paths = (!prefix.is_empty()).then(|| prefix.to_owned()).into_iter();
    for dir in dir_paths.chain(dirs.iter().map(|d| format!("{prefix}{}/", d.display()))) {
        tar.append_data(&mut header(tar::EntryType::Directory, 0o755, 0), dir, io::empty())?;
    }
    for entry in entries {
        let path = format!("{prefix}{}", entry.path);
        match &entry.kind {
            Kind::File { source, mode } => {
                let file = fs::File::open(source).with_context(|| format!("open {}", source.display()))?;
                let size = file.metadata()?.len();
                tar.append_data(&mut header(tar::EntryType::Regular, *mode, size), &path, file)?;
            }
            Kind::Symlink(target) => {
                tar.append_link(&mut header(tar::EntryType::Symlink, 0o777, 0), &path, target)?;
            }
            Kind::Dir => {}
        }
    }
    Ok(tar.into_inner()?)
}

fn gzip<W: io::Write>(out: W) -> flate2::write::GzEncoder<W> {
    flate2::write::GzEncoder::new(out, flate2::Compression::best())
}

fn write_tar_gz(path: &Path, entries: &[Entry], mtime: u64) -> Result<()> {
    let file = fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    tar_of(entries, "", mtime, gzip(file))?.finish()?.flush()?;
    Ok(())
}

/// A Debian binary package: `debian-binary`, `control.tar.gz` and `data.tar.gz` in an ar
/// archive (deb(5)).
fn write_deb(path: &Path, entries: &[Entry], arch: &Arch, version: &str, mtime: u64) -> Result<()> {
    let installed_kib = entries
        .iter()
        .map(|e| match &e.kind {
            Kind::File { source, .. } => fs::metadata(source).map(|m| m.len().div_ceil(1024)),
            _ => Ok(1),
        })
        .sum::<io::Result<u64>>()?;
    let control = format!(
        "Package: intercept\nVersion: {version}-{PACKAGE_RELEASE}\nArchitecture: {}\nMaintainer: The intercept authors\n\
         Installed-Size: {installed_kib}\nRecommends: iptables, nftables\nSection: net\nPriority: optional\n\
         Description: {SUMMARY}\n {}\n",
        arch.debian, DESCRIPTION
    );
    let control_dir = path.with_extension("control");
    fs::create_dir_all(&control_dir)?;
    fs::write(control_dir.join("control"), control)?;
    let control_tar = tar_of(&[file("control", control_dir.join("control"), 0o644)], "./", mtime, gzip(Vec::new()))?;
    let data_tar = tar_of(entries, "./", mtime, gzip(Vec::new()))?;
    fs::remove_dir_all(&control_dir)?;

    let file = fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut deb = ar::Builder::new(file);
    for (name, data) in [
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar.gz", control_tar.finish()?),
        ("data.tar.gz", data_tar.finish()?),
    ] {
        let mut header = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
        header.set_mode(0o100644);
        header.set_mtime(mtime);
        deb.append(&header, data.as_slice())?;
    }
    Ok(())
}

/// An RPM for Amazon Linux 2023 (gzip payload, which every rpm reads).
fn write_rpm(path: &Path, entries: &[Entry], arch: &Arch, version: &str, mtime: u64) -> Result<()> {
    let license = "Apache-2.0 AND (MIT OR GPL-2.0-only)";
    let mut rpm = rpm::PackageBuilder::new("intercept", version, license, arch.name, SUMMARY);
    rpm.using_config(rpm::BuildConfig::default().compression(rpm::CompressionType::Gzip).source_date(mtime as u32))
        .release(PACKAGE_RELEASE)
        .description(DESCRIPTION)
        .recommends(rpm::Dependency::any("iptables-nft"))
        .recommends(rpm::Dependency::any("nftables"));
    for entry in entries {
        let dest = format!("/{}", entry.path);
        match &entry.kind {
            Kind::File { source, mode } => {
                let mut options = rpm::FileOptions::new(&dest).permissions(*mode as u16);
                if entry.path.starts_with("usr/share/doc/") {
                    options = if LICENSES.iter().any(|(_, name)| entry.path.ends_with(name)) {
                        options.license()
                    } else {
                        options.doc()
                    };
                }
                rpm.with_file(source, options)
            }
            Kind::Symlink(target) => rpm.with_symlink(rpm::FileOptions::symlink(&dest, target)),
            Kind::Dir => rpm.with_dir_entry(rpm::FileOptions::dir(&dest).permissions(0o755)),
        }
        .with_context(|| format!("add {dest} to the RPM"))?;
    }
    rpm.build()?.write_file(path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// The CycloneDX SBOM of the binary built for `arch`, written to `out`.
fn sbom(ws: &Workspace, arch: &Arch, out: &Path) -> Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(ws.root.join("Cargo.toml"))
        .other_options(["--filter-platform".to_owned(), arch.triple.to_owned()])
        .exec()
        .context("cargo metadata")?;
    let bom = cyclonedx(&metadata, arch)?;
    fs::write(out, serde_json::to_string_pretty(&bom)? + "\n").with_context(|| format!("write {}", out.display()))?;
    Ok(())
}

/// A CycloneDX 1.5 SBOM of the agent's binary: the crates Cargo.lock resolves for `arch` that
/// the binary links (normal dependencies, followed from the agent; not build or dev ones), and
/// the eBPF programs' crate, whose object the binary embeds. cargo-cyclonedx writes the same from
/// the same metadata, but it writes a file beside every workspace member's Cargo.toml, and one
/// written in ebpf/ makes the agent's build script (which watches that directory) run again
/// and the agent compile again for every profile after each `dist`.
fn cyclonedx(metadata: &cargo_metadata::Metadata, arch: &Arch) -> Result<serde_json::Value> {
    use cargo_metadata::{DependencyKind, PackageId};
    use serde_json::json;

    let package = |id: &PackageId| metadata.packages.iter().find(|p| &p.id == id);
    let agent = metadata.packages.iter().find(|p| p.name.as_str() == "intercept").context("no intercept package")?;
    let ebpf =
        metadata.packages.iter().find(|p| p.name.as_str() == "intercept-ebpf").context("no intercept-ebpf package")?;
    let nodes = &metadata.resolve.as_ref().context("cargo metadata resolved no dependencies")?.nodes;
    let normal_deps = |id: &PackageId| -> Vec<PackageId> {
        nodes.iter().find(|n| &n.id == id).map_or_else(Vec::new, |node| {
            node.deps
                .iter()
                .filter(|d| d.dep_kinds.iter().any(|k| k.kind == DependencyKind::Normal))
                .map(|d| d.pkg.clone())
                .collect()
        })
    };
    let mut linked = std::collections::BTreeSet::new();
    let mut pending = vec![agent.id.clone(), ebpf.id.clone()];
    while let Some(id) = pending.pop() {
        if linked.insert(id.clone()) {
            pending.extend(normal_deps(&id));
        }
    }
    let component = |p: &cargo_metadata::Package, kind: &str| {
        let mut c = json!({
            "type": kind,
            "bom-ref": p.id.repr,
            "name": p.name.as_str(),
            "version": p.version.to_string(),
            "scope": "required",
        });
        if let Some(license) = &p.license {
            c["licenses"] = json!([{ "expression": license }]);
        }
        if let Some(description) = &p.description {
            c["description"] = json!(description);
        }
        // A crate from a registry is the crates.io package of that name and version; the
        // workspace's own and the patched aya (vendor/) are not.
        if p.source.as_ref().is_some_and(|s| s.is_crates_io()) {
            c["purl"] = json!(format!("pkg:cargo/{}@{}", p.name, p.version));
        }
        c
    };
    let components: Vec<_> =
        linked.iter().filter(|id| **id != agent.id).filter_map(package).map(|p| component(p, "library")).collect();
    let dependencies: Vec<_> = linked
        .iter()
        .map(|id| {
            let mut on: Vec<String> = normal_deps(id).into_iter().map(|d| d.repr).collect();
            if *id == agent.id {
                on.push(ebpf.id.repr.clone());
            }
            on.sort();
            json!({ "ref": id.repr, "dependsOn": on })
        })
        .collect();
    Ok(json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "component": component(agent, "application"),
            "properties": [{ "name": "cdx:rust:target", "value": arch.triple }],
        },
        "components": components,
        "dependencies": dependencies,
    }))
}

/// `SHA256SUMS` in `dist`, over every file in it, in sha256sum's format.
fn write_sha256sums(dist: &Path) -> Result<()> {
    let mut sums = String::new();
    for path in sorted_files(dist)? {
        let bytes = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let name = path.strip_prefix(dist)?.display();
        sums.push_str(&format!("{:x}  {name}\n", Sha256::digest(&bytes)));
    }
    fs::write(dist.join("SHA256SUMS"), sums)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF header and program header table with the given machine and segment types.
    fn elf(machine: u16, segments: &[u32]) -> Vec<u8> {
        let mut bytes = vec![0u8; 64];
        bytes[..6].copy_from_slice(b"\x7fELF\x02\x01");
        bytes[18..20].copy_from_slice(&machine.to_le_bytes());
        bytes[32..40].copy_from_slice(&64u64.to_le_bytes());
        bytes[54..56].copy_from_slice(&56u16.to_le_bytes());
        bytes[56..58].copy_from_slice(&u16::try_from(segments.len()).unwrap().to_le_bytes());
        for p_type in segments {
            let mut header = vec![0u8; 56];
            header[..4].copy_from_slice(&p_type.to_le_bytes());
            bytes.extend(header);
        }
        bytes
    }

    #[test]
    fn the_sbom_lists_what_the_binary_links_and_embeds() {
        let ws = workspace();
        let metadata = cargo_metadata::MetadataCommand::new()
            .manifest_path(ws.root.join("Cargo.toml"))
            .other_options(["--filter-platform".to_owned(), AARCH64.triple.to_owned()])
            .exec()
            .unwrap();
        let bom = cyclonedx(&metadata, &AARCH64).unwrap();
        let names: Vec<&str> =
            bom["components"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        // Linked (aya, patched from vendor/: no crates.io purl) and embedded (the eBPF crate).
        for linked in ["aya", "intercept-common", "intercept-ebpf", "libc", "serde_json"] {
            assert!(names.contains(&linked), "{linked} missing from {names:?}");
        }
        // A build dependency and dev dependencies of the agent: not in the binary.
        for not_linked in ["aya-build", "proptest", "insta", "tempfile"] {
            assert!(!names.contains(&not_linked), "{not_linked} listed");
        }
        let aya = bom["components"].as_array().unwrap().iter().find(|c| c["name"] == "aya").unwrap();
        assert!(aya.get("purl").is_none());
        let libc = bom["components"].as_array().unwrap().iter().find(|c| c["name"] == "libc").unwrap();
        assert!(libc["purl"].as_str().unwrap().starts_with("pkg:cargo/libc@"));
        assert_eq!(bom["metadata"]["component"]["name"], "intercept");
    }

    #[test]
    fn a_program_interpreter_means_a_dynamic_executable() {
        // PT_PHDR, PT_INTERP, PT_LOAD: what a glibc build has.
        assert_eq!(Elf::parse(&elf(62, &[6, 3, 1])).unwrap(), Elf { machine: 62, interpreter: true });
        // PT_LOAD, PT_DYNAMIC: a static-pie (relocates itself, loads nothing).
        assert_eq!(Elf::parse(&elf(183, &[1, 2])).unwrap(), Elf { machine: 183, interpreter: false });
    }

    #[test]
    fn not_an_elf_executable_is_refused() {
        assert!(Elf::parse(b"#!/bin/sh\n").is_err());
        let mut truncated = elf(62, &[3]);
        truncated.truncate(66);
        assert!(Elf::parse(&truncated).is_err());
    }

    fn workspace() -> Workspace {
        Workspace::locate().unwrap()
    }

    /// The ECS agent's container sees the host's /usr/lib, not /usr/bin: the CNI names must
    /// resolve to the binary inside the CNI directory.
    #[test]
    fn the_packages_cni_names_resolve_inside_the_cni_directory() {
        let entries = package_layout(&workspace(), Path::new("/build/intercept")).unwrap();
        let binary = format!("{CNI_DIR}/intercept");
        assert!(entries.contains(&file(&binary, "/build/intercept", 0o755)));
        for name in CNI_NAMES {
            assert!(entries.contains(&symlink(format!("{CNI_DIR}/{name}"), "intercept")), "{name}");
        }
        let bin = entries.iter().find(|e| e.path == "usr/bin/intercept").unwrap();
        let Kind::Symlink(target) = &bin.kind else { panic!("{bin:?}") };
        assert_eq!(normalize(&Path::new("usr/bin").join(target)), binary);
    }

    /// `a/b/../c` as `a/c`: where a relative symlink leads.
    fn normalize(path: &Path) -> String {
        let mut parts: Vec<&str> = Vec::new();
        for part in path.to_str().unwrap().split('/') {
            if part == ".." {
                parts.pop();
            } else {
                parts.push(part);
            }
        }
        parts.join("/")
    }

    #[test]
    fn every_layout_carries_the_licences_units_and_examples() {
        let ws = workspace();
        let tarball = tarball_layout(&ws, "intercept-0.1.0-x86_64", Path::new("/build/intercept")).unwrap();
        let package = package_layout(&ws, Path::new("/build/intercept")).unwrap();
        for (layout, prefix) in [(&tarball, "intercept-0.1.0-x86_64/"), (&package, "usr/share/doc/intercept/")] {
            let paths: Vec<&str> = layout.iter().map(|e| e.path.as_str()).collect();
            for (_, name) in LICENSES {
                assert!(paths.contains(&format!("{prefix}{name}").as_str()), "{prefix}{name}");
            }
            for unit in UNITS {
                assert!(paths.contains(&format!("{prefix}deploy/{unit}").as_str()), "{prefix}deploy/{unit}");
            }
            assert!(paths.contains(&format!("{prefix}examples/ec2-taskB.json").as_str()));
            assert!(paths.contains(&format!("{prefix}README.md").as_str()));
        }
        for unit in UNITS {
            assert!(package.iter().any(|e| e.path == format!("usr/lib/systemd/system/{unit}")), "{unit}");
        }
    }
}
