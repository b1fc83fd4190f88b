//! The client's release archives: `kubectl-orb8_<tag>_<os>_<arch>.tar.gz` holding the binary
//! and `LICENSE` at the top (what the krew manifest's `files` copy out), reproducible (fixed
//! mtimes and owners, sorted entries, gzip without a timestamp), and `SHA256SUMS` beside them.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use flate2::Compression;
use sha2::{Digest as _, Sha256};

/// The archive's file name for release `tag` on `os`/`arch`.
pub fn archive_name(tag: &str, os: &str, arch: &str) -> String {
    format!("kubectl-orb8_{tag}_{os}_{arch}.tar.gz")
}

/// A tar.gz holding `exe_name` (mode 0755, the binary's bytes) and `LICENSE` (0644).
pub fn archive(binary: &[u8], exe_name: &str, license: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut entries = [(exe_name, binary, 0o755), ("LICENSE", license, 0o644)];
    entries.sort_by_key(|(name, _, _)| *name);
    for (name, bytes, mode) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(bytes.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        tar.append_data(&mut h, name, bytes)?;
    }
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), Compression::best());
    gz.write_all(&tar.into_inner()?)?;
    Ok(gz.finish()?)
}

/// `SHA256SUMS` lines (`<hex>  <name>`, as `sha256sum -c` reads them) for the files named, in
/// name order.
pub fn sha256sums(dir: &Path, names: &[String]) -> anyhow::Result<String> {
    let mut names = names.to_vec();
    names.sort();
    let mut out = String::new();
    for n in names {
        let path = dir.join(&n);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        out.push_str(&format!("{:x}  {n}\n", Sha256::digest(&bytes)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn archives_hold_the_binary_and_license_and_are_reproducible() {
        let a = archive(b"\x7fELF binary", "kubectl-orb8.exe", b"license text").expect("a");
        let b = archive(b"\x7fELF binary", "kubectl-orb8.exe", b"license text").expect("b");
        assert_eq!(a, b);
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(a.as_slice())
            .read_to_end(&mut raw)
            .expect("gunzip");
        let mut found = Vec::new();
        for e in tar::Archive::new(raw.as_slice()).entries().expect("tar") {
            let mut e = e.expect("entry");
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).expect("read");
            found.push((
                e.path().expect("path").to_string_lossy().into_owned(),
                e.header().mode().expect("mode"),
                e.header().mtime().expect("mtime"),
                bytes,
            ));
        }
        assert_eq!(
            found,
            vec![
                ("LICENSE".into(), 0o644, 0, b"license text".to_vec()),
                (
                    "kubectl-orb8.exe".into(),
                    0o755,
                    0,
                    b"\x7fELF binary".to_vec()
                ),
            ]
        );
        assert_eq!(
            archive_name("v0.1.0", "darwin", "arm64"),
            "kubectl-orb8_v0.1.0_darwin_arm64.tar.gz"
        );
    }
}
