//! What a load needs to know of the kernel, probed once per boot rather than at every apply:
//! that it has the four program types the backend loads, and aya's feature probes (program
//! names, global data, BTF kinds, …). Together they are nine `BPF_PROG_LOAD`s and nine
//! `BPF_BTF_LOAD`s, about half a millisecond of each CLI apply (docs/performance.md).
//!
//! The first apply that loads the programs successfully writes what it found to [`RECORD`]:
//! on the host's `/run` (a tmpfs, gone with the boot), beside the lock files every agent on the
//! host shares, and stamped with the boot id and the kernel release so that a record from
//! another boot or kernel is never read. Only a successful load writes it: aya's probes fail
//! silently, so a process without the privileges to load programs would detect none of the
//! features, and such a record would make every later load fail. A failed apply that used the
//! record deletes it, and the next one probes again.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use aya_obj::Features;
use aya_obj::btf::BtfFeatures;

/// Where the record lives: beside [`crate::lock::SYSTEM_DIR`].
pub(super) const RECORD: &str = "/run/intercept/bpf-features";

/// The record's format; another one is ignored (and replaced by the next successful load).
const FORMAT: u32 = 1;

/// Whether this process already knows the host's features (read from the record or detected),
/// so that a daemon reads the record once, not at every task.
static KNOWN: AtomicBool = AtomicBool::new(false);

/// What identifies the running kernel's boot: a record with anything else is stale.
pub(super) struct Boot {
    id: String,
    kernel: String,
}

impl Boot {
    fn current() -> Option<Boot> {
        let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_owned();
        Some(Boot { id, kernel: crate::backend::kernel_release() })
    }
}

/// Before a load: true when this process knows the host's features, reading the record if it
/// must (aya is then given them, and runs no probe); false when the caller has to probe.
pub(super) fn known() -> bool {
    if KNOWN.load(Ordering::Relaxed) {
        return true;
    }
    let Some(boot) = Boot::current() else { return false };
    let Some(features) = fs::read_to_string(RECORD).ok().and_then(|text| parse(&text, &boot)) else { return false };
    // Err: this process detected or was given them already, which is as good.
    let _ = aya::set_features(features);
    KNOWN.store(true, Ordering::Relaxed);
    true
}

/// After a successful load: records what this process detected, if it detected anything (an
/// apply that loaded nothing has nothing to record). Failing to write is not an error of the
/// apply: the next one probes again.
pub(super) fn loaded() {
    let Some(features) = aya::detected_features() else { return };
    KNOWN.store(true, Ordering::Relaxed);
    let Some(boot) = Boot::current() else { return };
    let _ = write(Path::new(RECORD), &render(features, &boot));
}

/// After a failed apply that used the record: the next apply does not trust it.
pub(super) fn distrust() {
    KNOWN.store(false, Ordering::Relaxed);
    let _ = fs::remove_file(RECORD);
}

/// Written whole or not at all: a reader never sees half a record.
fn write(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir)?;
    let staging = dir.join(format!(".bpf-features.{}", std::process::id()));
    let mut file = fs::File::create(&staging)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    fs::rename(&staging, path).inspect_err(|_| {
        let _ = fs::remove_file(&staging);
    })
}

/// `format=1 boot=<id> kernel=<release> aya=<bits, hex>`.
pub(super) fn render(features: &Features, boot: &Boot) -> String {
    format!("format={FORMAT} boot={} kernel={} aya={:04x}\n", boot.id, boot.kernel, encode(features))
}

/// The features of a record made in `boot`, or `None` for anything else.
pub(super) fn parse(text: &str, boot: &Boot) -> Option<Features> {
    let mut fields = text.trim_end_matches('\n').split(' ');
    let mut field = |name: &str| fields.next()?.strip_prefix(name)?.strip_prefix('=');
    let format: u32 = field("format")?.parse().ok()?;
    let (id, kernel, bits) = (field("boot")?, field("kernel")?, field("aya")?);
    if format != FORMAT || id != boot.id || kernel != boot.kernel || fields.next().is_some() || bits.len() != 4 {
        return None;
    }
    Some(decode(u16::from_str_radix(bits, 16).ok()?))
}

/// One bit per feature aya detects; bit 7 says whether the kernel has BTF at all, and bits 8 to
/// 15 are its BTF kinds.
pub(super) fn encode(f: &Features) -> u16 {
    let btf = f.btf();
    [
        f.bpf_name(),
        f.bpf_probe_read_kernel(),
        f.bpf_perf_link(),
        f.bpf_global_data(),
        f.bpf_cookie(),
        f.cpumap_prog_id(),
        f.devmap_prog_id(),
        btf.is_some(),
        btf.is_some_and(BtfFeatures::btf_func),
        btf.is_some_and(BtfFeatures::btf_func_global),
        btf.is_some_and(BtfFeatures::btf_datasec),
        btf.is_some_and(BtfFeatures::btf_datasec_zero),
        btf.is_some_and(BtfFeatures::btf_float),
        btf.is_some_and(BtfFeatures::btf_decl_tag),
        btf.is_some_and(BtfFeatures::btf_type_tag),
        btf.is_some_and(BtfFeatures::btf_enum64),
    ]
    .iter()
    .enumerate()
    .fold(0, |acc, (i, &on)| acc | (u16::from(on) << i))
}

pub(super) fn decode(bits: u16) -> Features {
    let bit = |i: u32| bits & (1 << i) != 0;
    let btf = bit(7).then(|| BtfFeatures::new(bit(8), bit(9), bit(10), bit(11), bit(12), bit(13), bit(14), bit(15)));
    Features::new(bit(0), bit(1), bit(2), bit(3), bit(4), bit(5), bit(6), btf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> Boot {
        Boot { id: "0b5e6c52-8f0e-4d8c-9a57-1c2d3e4f5a6b".into(), kernel: "6.1.0-57-amd64".into() }
    }

    #[test]
    fn every_combination_of_features_survives_the_record() {
        for bits in 0..=u16::MAX {
            // Without BTF its kinds mean nothing: they decode as absent.
            let bits = if bits & 0x80 == 0 { bits & 0x7f } else { bits };
            assert_eq!(encode(&decode(bits)), bits);
            assert_eq!(encode(&parse(&render(&decode(bits), &boot()), &boot()).unwrap()), bits);
        }
    }

    #[test]
    fn a_record_is_read_only_in_the_boot_and_kernel_it_was_made_in() {
        let record = render(&decode(0xfbff), &boot());
        assert_eq!(record, "format=1 boot=0b5e6c52-8f0e-4d8c-9a57-1c2d3e4f5a6b kernel=6.1.0-57-amd64 aya=fbff\n");
        let other_boot = Boot { id: "another".into(), ..boot() };
        let other_kernel = Boot { kernel: "6.12.0-1-amd64".into(), ..boot() };
        for (what, text, boot) in [
            ("another boot", record.clone(), other_boot),
            ("another kernel", record.clone(), other_kernel),
            ("another format", record.replace("format=1", "format=2"), boot()),
            ("a field more", record.replace('\n', " more=1\n"), boot()),
            ("a field missing", record.replace(" kernel=6.1.0-57-amd64", ""), boot()),
            ("bits not hex", record.replace("aya=fbff", "aya=zbff"), boot()),
            ("bits too long", record.replace("aya=fbff", "aya=0fbff"), boot()),
            ("fields reordered", record.replace("format=1 boot=", "boot=").replace('\n', " format=1\n"), boot()),
            ("empty", String::new(), boot()),
        ] {
            assert!(parse(&text, &boot).is_none(), "{what}: {text:?} was read");
        }
        assert_eq!(parse(&record, &boot()).map(|f| encode(&f)), Some(0xfbff));
    }
}
