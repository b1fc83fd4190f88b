//! The agent image as an OCI image layout in a tar (`oci-layout`, `index.json`,
//! `blobs/sha256/...`), written without a container daemon, and read back to check it.
//!
//! Layout: `index.json` names one image index (annotated with the image's name, so
//! `ctr images import` and `skopeo copy oci-archive:` find it); that index lists one manifest
//! per platform; each manifest has a config (entrypoint, labels) and one gzip layer holding only
//! the agent binary at [`AGENT_PATH`]: no shell, no libc, nothing else (`FROM scratch`).
//!
//! Reproducible: the same binaries and labels give the same bytes (fixed mtimes and owners,
//! no `created` time, JSON with sorted keys, gzip without a timestamp), so the digests of two
//! builds of one commit agree.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr as _;

use anyhow::{Context as _, bail, ensure};
use flate2::Compression;
use flate2::read::GzDecoder;
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest, ImageConfiguration,
    ImageConfigurationBuilder, ImageIndex, ImageIndexBuilder, ImageManifest, ImageManifestBuilder,
    MediaType, OciLayoutBuilder, Os, PlatformBuilder, RootFsBuilder, SCHEMA_VERSION,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Where the agent binary lives in the image (the agent pod spec runs it from there).
pub const AGENT_PATH: &str = "/usr/local/bin/orb8-agent";

/// The image's platforms, as OCI (GOARCH) names, in index order.
pub const PLATFORMS: [&str; 2] = ["amd64", "arm64"];

/// Annotation naming the image for containerd (`ctr images import`, `kind load image-archive`).
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Annotation naming the reference inside the layout (skopeo, the OCI image spec).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What goes into the image besides the binaries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMeta {
    /// Full image name, `registry/repository:tag`.
    pub name: String,
    /// `org.opencontainers.image.*` labels (source, version, revision, ...).
    pub labels: BTreeMap<String, String>,
}

/// One built image: its index digest and the bytes of the tar.
#[derive(Clone, Debug)]
pub struct Built {
    /// Digest of the image index (what a registry reports for the multi-arch tag).
    pub index_digest: String,
    /// The OCI layout as a tar.
    pub tar: Vec<u8>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    format!("{:x}", h.finalize())
}

/// JSON with every object's keys sorted (oci-spec keeps labels and annotations in `HashMap`s,
/// whose order changes from run to run).
fn canonical_json<T: serde::Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    fn sort(v: Value) -> Value {
        match v {
            Value::Object(map) => {
                let sorted: BTreeMap<String, Value> =
                    map.into_iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(sort).collect()),
            other => other,
        }
    }
    Ok(serde_json::to_vec(&sort(serde_json::to_value(value)?))?)
}

/// Content-addressed blobs of the layout, by hex digest.
#[derive(Default)]
struct Blobs(BTreeMap<String, Vec<u8>>);

impl Blobs {
    fn add(&mut self, media_type: MediaType, bytes: Vec<u8>) -> anyhow::Result<Descriptor> {
        let hex = sha256_hex(&bytes);
        let digest = Digest::from_str(&format!("sha256:{hex}"))?;
        let d = Descriptor::new(media_type, bytes.len() as u64, digest);
        self.0.insert(hex, bytes);
        Ok(d)
    }
}

/// A tar header for a reproducible entry: owner root, mtime 0.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// The layer: a tar holding only the binary at [`AGENT_PATH`] (mode 0755).
fn layer_tar(binary: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    b.append_data(&mut h, AGENT_PATH.trim_start_matches('/'), binary)?;
    Ok(b.into_inner()?)
}

fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    // GzBuilder writes mtime 0 and no file name unless told otherwise.
    let mut e = flate2::GzBuilder::new().write(Vec::new(), Compression::best());
    e.write_all(bytes)?;
    Ok(e.finish()?)
}

fn oci_arch(platform: &str) -> anyhow::Result<Arch> {
    match platform {
        "amd64" => Ok(Arch::Amd64),
        "arm64" => Ok(Arch::ARM64),
        other => bail!(
            "no image platform {other} (known: {})",
            PLATFORMS.join(", ")
        ),
    }
}

/// Builds the image from one agent binary per platform (`amd64`, `arm64`), in that order.
pub fn build(binaries: &[(&str, &[u8])], meta: &ImageMeta) -> anyhow::Result<Built> {
    ensure!(!binaries.is_empty(), "no agent binaries given");
    let mut blobs = Blobs::default();
    let labels: HashMap<String, String> = meta.labels.clone().into_iter().collect();
    let mut manifests = Vec::new();
    for (platform, binary) in binaries {
        let arch = oci_arch(platform)?;
        let layer = layer_tar(binary)?;
        let diff_id = format!("sha256:{}", sha256_hex(&layer));
        let layer = blobs.add(MediaType::ImageLayerGzip, gzip(&layer)?)?;
        let config = ImageConfigurationBuilder::default()
            .architecture(arch.clone())
            .os(Os::Linux)
            .config(
                ConfigBuilder::default()
                    .entrypoint(vec![AGENT_PATH.to_string()])
                    .labels(labels.clone())
                    .build()?,
            )
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(vec![diff_id])
                    .build()?,
            )
            .build()?;
        let config = blobs.add(MediaType::ImageConfig, canonical_json(&config)?)?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageManifest)
            .config(config)
            .layers(vec![layer])
            .annotations(labels.clone())
            .build()?;
        let mut d = blobs.add(MediaType::ImageManifest, canonical_json(&manifest)?)?;
        d.set_platform(Some(
            PlatformBuilder::default()
                .architecture(arch)
                .os(Os::Linux)
                .build()?,
        ));
        manifests.push(d);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .annotations(labels)
        .build()?;
    let index = blobs.add(MediaType::ImageIndex, canonical_json(&index)?)?;
    let tag = meta
        .name
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map(|(_, t)| t.to_string())
        .with_context(|| format!("image name {} has no tag", meta.name))?;
    let top = DescriptorBuilder::default()
        .media_type(MediaType::ImageIndex)
        .digest(index.digest().clone())
        .size(index.size())
        .annotations(HashMap::from([
            (ANNOTATION_CONTAINERD_NAME.to_string(), meta.name.clone()),
            (ANNOTATION_REF_NAME.to_string(), tag),
        ]))
        .build()?;
    let layout_index = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![top])
        .build()?;
    let layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()?;

    let mut tar = tar::Builder::new(Vec::new());
    let file = |tar: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]| {
        let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
        tar.append_data(&mut h, path, bytes)
    };
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, dir, std::io::empty())?;
    }
    // BTreeMap: blobs in digest order.
    for (hex, bytes) in &blobs.0 {
        file(&mut tar, &format!("blobs/sha256/{hex}"), bytes)?;
    }
    file(&mut tar, "index.json", &canonical_json(&layout_index)?)?;
    file(&mut tar, "oci-layout", &canonical_json(&layout)?)?;
    Ok(Built {
        index_digest: index.digest().to_string(),
        tar: tar.into_inner()?,
    })
}

/// One file found in a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerFile {
    /// Its path in the image (absolute).
    pub path: String,
    /// Its permission bits.
    pub mode: u32,
    /// Its content.
    pub bytes: Vec<u8>,
}

/// One platform's image, as read back from a layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformImage {
    /// OCI architecture (`amd64`, `arm64`).
    pub arch: String,
    /// OCI OS (`linux`).
    pub os: String,
    /// The config's entrypoint.
    pub entrypoint: Vec<String>,
    /// The config's labels.
    pub labels: BTreeMap<String, String>,
    /// Every entry of every layer, in order: directories, links and devices too (as mode only
    /// with empty bytes), so "nothing else in the image" can be checked.
    pub files: Vec<LayerFile>,
    /// The entry types of `files`, `'0'` for a regular file.
    pub kinds: Vec<char>,
    /// Compressed size of its layers in bytes.
    pub compressed_bytes: u64,
}

/// An image layout read back and checked: every blob's digest and size match their
/// descriptors, and each layer's diff id matches the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    /// The name `index.json` gives the image (`io.containerd.image.name`).
    pub name: String,
    /// Digest of the image index.
    pub index_digest: String,
    /// One entry per platform, in index order.
    pub platforms: Vec<PlatformImage>,
}

fn read_blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, d: &Descriptor) -> anyhow::Result<&'a [u8]> {
    let digest = d.digest().to_string();
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("digest {digest} is not sha256"))?;
    let bytes = files
        .get(&format!("blobs/sha256/{hex}"))
        .with_context(|| format!("blob {digest} is missing"))?;
    ensure!(
        sha256_hex(bytes) == hex,
        "blob {digest} does not match its digest"
    );
    ensure!(
        bytes.len() as u64 == d.size(),
        "blob {digest} is {} bytes, its descriptor says {}",
        bytes.len(),
        d.size()
    );
    Ok(bytes)
}

/// Reads an image layout tar and checks it (see [`Inspected`]).
pub fn inspect(tar_bytes: &[u8]) -> anyhow::Result<Inspected> {
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_dir() {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        files.insert(path, bytes);
    }
    let layout: Value = serde_json::from_slice(
        files
            .get("oci-layout")
            .context("the tar has no oci-layout")?,
    )?;
    ensure!(
        layout["imageLayoutVersion"] == "1.0.0",
        "oci-layout says {layout}"
    );
    let top = ImageIndex::from_reader(
        files
            .get("index.json")
            .context("the tar has no index.json")?
            .as_slice(),
    )?;
    let [entry] = top.manifests().as_slice() else {
        bail!(
            "index.json lists {} entries, expected one image index",
            top.manifests().len()
        );
    };
    ensure!(
        *entry.media_type() == MediaType::ImageIndex,
        "index.json's entry is a {}, not an image index",
        entry.media_type()
    );
    let name = entry
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_CONTAINERD_NAME))
        .cloned()
        .context("index.json does not name the image")?;
    let index = ImageIndex::from_reader(read_blob(&files, entry)?)?;
    let mut platforms = Vec::new();
    for m in index.manifests() {
        let platform = m
            .platform()
            .as_ref()
            .context("a manifest has no platform")?;
        let manifest = ImageManifest::from_reader(read_blob(&files, m)?)?;
        let config = ImageConfiguration::from_reader(read_blob(&files, manifest.config())?)?;
        ensure!(
            config.architecture() == platform.architecture() && config.os() == platform.os(),
            "the index says {}/{}, the config {}/{}",
            platform.os(),
            platform.architecture(),
            config.os(),
            config.architecture()
        );
        let diff_ids = config.rootfs().diff_ids();
        ensure!(
            diff_ids.len() == manifest.layers().len(),
            "{} layers but {} diff ids",
            manifest.layers().len(),
            diff_ids.len()
        );
        let mut out = Vec::new();
        let mut kinds = Vec::new();
        let mut compressed_bytes = 0;
        for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
            ensure!(
                *layer.media_type() == MediaType::ImageLayerGzip,
                "layer {} is a {}",
                layer.digest(),
                layer.media_type()
            );
            let gz = read_blob(&files, layer)?;
            compressed_bytes += gz.len() as u64;
            let mut raw = Vec::new();
            GzDecoder::new(gz).read_to_end(&mut raw)?;
            ensure!(
                format!("sha256:{}", sha256_hex(&raw)) == *diff_id,
                "layer {} does not match its diff id {diff_id}",
                layer.digest()
            );
            for e in tar::Archive::new(raw.as_slice()).entries()? {
                let mut e = e?;
                let kind = e.header().entry_type();
                let path = format!("/{}", e.path()?.to_string_lossy().trim_start_matches('/'));
                let mode = e.header().mode()?;
                let mut bytes = Vec::new();
                if kind.is_file() {
                    e.read_to_end(&mut bytes)?;
                }
                kinds.push(kind.as_byte() as char);
                out.push(LayerFile { path, mode, bytes });
            }
        }
        let c = config.config().as_ref();
        platforms.push(PlatformImage {
            arch: platform.architecture().to_string(),
            os: platform.os().to_string(),
            entrypoint: c.and_then(|c| c.entrypoint().clone()).unwrap_or_default(),
            labels: c
                .and_then(|c| c.labels().clone())
                .unwrap_or_default()
                .into_iter()
                .collect(),
            files: out,
            kinds,
            compressed_bytes,
        });
    }
    Ok(Inspected {
        name,
        index_digest: entry.digest().to_string(),
        platforms,
    })
}

/// Checks that an image is what orb8 ships: platforms exactly [`PLATFORMS`], each with the
/// entrypoint [`AGENT_PATH`] and layers holding exactly one executable file there and nothing
/// else. Returns the binary per platform.
pub fn check_agent_image(image: &Inspected) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let arches: Vec<&str> = image.platforms.iter().map(|p| p.arch.as_str()).collect();
    ensure!(
        arches == PLATFORMS,
        "the index lists {arches:?}, expected {PLATFORMS:?}"
    );
    let mut out = Vec::new();
    for p in &image.platforms {
        ensure!(p.os == "linux", "{} image is for {}", p.arch, p.os);
        ensure!(
            p.entrypoint == [AGENT_PATH],
            "{} entrypoint is {:?}",
            p.arch,
            p.entrypoint
        );
        let [file] = p.files.as_slice() else {
            let paths: Vec<&str> = p.files.iter().map(|f| f.path.as_str()).collect();
            bail!(
                "{} layers hold {paths:?}, expected only {AGENT_PATH}",
                p.arch
            );
        };
        ensure!(
            file.path == AGENT_PATH && p.kinds == ['0'] && file.mode == 0o755,
            "{} layer holds {} (type {:?}, mode {:o}), expected the executable {AGENT_PATH}",
            p.arch,
            file.path,
            p.kinds,
            file.mode
        );
        out.push((p.arch.clone(), file.bytes.clone()));
    }
    Ok(out)
}

/// Reads and checks the image tar at `path`.
pub fn inspect_file(path: &Path) -> anyhow::Result<Inspected> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    inspect(&bytes).with_context(|| format!("checking {}", path.display()))
}
