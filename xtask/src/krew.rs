//! The krew plugin manifest: the repository's `krew.yaml` is a template; [`render`] fills in
//! the release version and each platform's archive checksum, and [`validate`] applies the
//! rules krew applies to a plugin manifest (its `validation` package: apiVersion, kind, a safe
//! name, a one-line short description, a semver version, per platform a uri, a lowercase
//! sha256, a bin, well-formed files and an `os`/`arch` selector) plus orb8's own (https uris,
//! no two platforms with one selector, `.exe` on Windows, every release platform present).
//!
//! Template placeholders: `{{version}}` (the tag, `v0.1.0`) anywhere in `spec.version` and the
//! uris; `{{sha256}}` as a platform's sha256, replaced by the checksum of the archive its uri
//! names, read from the dist folder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The manifest's `apiVersion`.
pub const API_VERSION: &str = "krew.googlecontainertools.github.com/v1alpha2";
/// Where a template marks the version.
pub const VERSION_PLACEHOLDER: &str = "{{version}}";
/// Where a template marks a platform's checksum.
pub const SHA256_PLACEHOLDER: &str = "{{sha256}}";

/// The six platforms every release carries, as krew's `os`/`arch` selector values.
pub const RELEASE_PLATFORMS: [(&str, &str); 6] = [
    ("linux", "amd64"),
    ("linux", "arm64"),
    ("darwin", "amd64"),
    ("darwin", "arm64"),
    ("windows", "amd64"),
    ("windows", "arm64"),
];

/// A krew plugin manifest (the fields orb8 writes; unknown fields are refused).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Plugin {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be `Plugin`.
    pub kind: String,
    /// The plugin's name.
    pub metadata: Metadata,
    /// Everything else.
    pub spec: Spec,
}

/// `metadata`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The plugin name (`kubectl <name>`).
    pub name: String,
}

/// `spec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// `vMAJOR.MINOR.PATCH`.
    pub version: String,
    /// Project page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homepage: Option<String>,
    /// One line for `kubectl krew search`.
    pub short_description: String,
    /// Longer text for `kubectl krew info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Shown after installation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caveats: Option<String>,
    /// One entry per os/arch.
    pub platforms: Vec<Platform>,
}

/// One platform's archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    /// Which machines it is for.
    pub selector: Selector,
    /// Where the archive is downloaded from.
    pub uri: String,
    /// The archive's sha256, lowercase hex.
    pub sha256: String,
    /// The executable, relative to the plugin's install folder.
    pub bin: String,
    /// What to copy out of the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileOperation>>,
}

/// A Kubernetes label selector over `os` and `arch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// Exact labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Expressions (accepted for the key check; orb8 uses labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<serde_json::Value>>,
}

/// A copy out of the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOperation {
    /// Path (glob) in the archive.
    pub from: String,
    /// Destination in the install folder.
    pub to: String,
}

impl Platform {
    /// The `(os, arch)` its labels select, when both are given.
    pub fn os_arch(&self) -> Option<(String, String)> {
        let l = self.selector.match_labels.as_ref()?;
        Some((l.get("os")?.clone(), l.get("arch")?.clone()))
    }

    /// The archive's file name (the uri's last segment).
    pub fn archive_name(&self) -> &str {
        self.uri.rsplit('/').next().unwrap_or(&self.uri)
    }
}

/// Parses a manifest (or template).
pub fn parse(text: &str) -> anyhow::Result<Plugin> {
    serde_norway::from_str(text).context("not a krew plugin manifest")
}

fn is_semver(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let core = rest.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
        })
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a rendered manifest for plugin `name` (krew's rules, then orb8's; see the module
/// doc). With `all_platforms`, every one of [`RELEASE_PLATFORMS`] must be there.
pub fn validate(p: &Plugin, name: &str, all_platforms: bool) -> anyhow::Result<()> {
    ensure!(
        p.api_version == API_VERSION,
        "apiVersion is {:?}, krew reads {API_VERSION:?}",
        p.api_version
    );
    ensure!(p.kind == "Plugin", "kind is {:?}, must be Plugin", p.kind);
    let safe = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ensure!(safe, "plugin name {name:?} is not allowed");
    ensure!(
        p.metadata.name == name,
        "plugin should be named {name:?}, not {:?}",
        p.metadata.name
    );
    let s = &p.spec;
    ensure!(!s.short_description.is_empty(), "no shortDescription");
    ensure!(
        !s.short_description.contains(['\r', '\n']),
        "shortDescription has a line break"
    );
    ensure!(
        is_semver(&s.version),
        "version {:?} is not vMAJOR.MINOR.PATCH",
        s.version
    );
    // `validate-krew-manifest` warns about these; krew-index reviewers ask for them.
    for (field, text, max) in [
        ("shortDescription", Some(s.short_description.as_str()), 70),
        ("description", s.description.as_deref(), 80),
        ("caveats", s.caveats.as_deref(), 80),
    ] {
        for line in text.unwrap_or_default().lines() {
            ensure!(
                line.len() <= max || !line.trim().contains(' '),
                "a line of {field} is longer than {max} characters: {line:?}"
            );
        }
    }
    ensure!(!s.platforms.is_empty(), "no platforms");
    let mut seen = BTreeSet::new();
    for pl in &s.platforms {
        let what = pl.uri.as_str();
        ensure!(!pl.uri.is_empty(), "a platform has no uri");
        ensure!(pl.uri.starts_with("https://"), "{what}: uri is not https");
        ensure!(
            is_sha256(&pl.sha256),
            "{what}: sha256 {:?} is not 64 lowercase hex digits",
            pl.sha256
        );
        ensure!(!pl.bin.is_empty(), "{what}: no bin");
        if let Some(files) = &pl.files {
            ensure!(!files.is_empty(), "{what}: files is empty");
            for f in files {
                ensure!(
                    !f.from.is_empty() && !f.to.is_empty(),
                    "{what}: a file has no from or to"
                );
            }
        }
        let sel = &pl.selector;
        let labels = sel.match_labels.as_ref();
        ensure!(
            labels.is_some_and(|l| !l.is_empty())
                || sel
                    .match_expressions
                    .as_ref()
                    .is_some_and(|e| !e.is_empty()),
            "{what}: empty selector"
        );
        if let Some(l) = labels {
            for key in l.keys() {
                ensure!(
                    key == "os" || key == "arch",
                    "{what}: selector key {key:?} not supported"
                );
            }
        }
        let (os, arch) = pl
            .os_arch()
            .with_context(|| format!("{what}: the selector must name os and arch"))?;
        ensure!(
            ["linux", "darwin", "windows"].contains(&os.as_str())
                && ["amd64", "arm64", "386", "arm"].contains(&arch.as_str()),
            "{what}: krew has no platform {os}/{arch}"
        );
        if os == "windows" {
            ensure!(pl.bin.ends_with(".exe"), "{what}: Windows bin without .exe");
        }
        ensure!(
            seen.insert((os.clone(), arch.clone())),
            "two platforms for {os}/{arch}"
        );
    }
    if all_platforms {
        for (os, arch) in RELEASE_PLATFORMS {
            ensure!(
                seen.contains(&(os.to_string(), arch.to_string())),
                "no platform for {os}/{arch}"
            );
        }
    }
    Ok(())
}

/// The sha256 of a file, lowercase hex.
pub fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// A rendered manifest and the platforms left out because their archive was not in the dist
/// folder.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The manifest.
    pub plugin: Plugin,
    /// `os/arch` of each platform left out.
    pub missing: Vec<String>,
}

/// Fills in `template` for release `version` (`v0.1.0`) from the archives in `dist`. A
/// platform whose archive is not there is left out (and listed), or is an error with
/// `all_platforms`.
pub fn render(
    template: &str,
    version: &str,
    dist: &Path,
    all_platforms: bool,
) -> anyhow::Result<Rendered> {
    ensure!(
        is_semver(version),
        "version {version:?} is not vMAJOR.MINOR.PATCH"
    );
    let mut plugin = parse(template)?;
    plugin.spec.version = plugin.spec.version.replace(VERSION_PLACEHOLDER, version);
    let mut platforms = Vec::new();
    let mut missing = Vec::new();
    for mut pl in std::mem::take(&mut plugin.spec.platforms) {
        pl.uri = pl.uri.replace(VERSION_PLACEHOLDER, version);
        ensure!(
            pl.sha256 == SHA256_PLACEHOLDER,
            "{}: the template's sha256 must be {SHA256_PLACEHOLDER}",
            pl.uri
        );
        let archive = dist.join(pl.archive_name());
        let label = pl
            .os_arch()
            .map(|(os, arch)| format!("{os}/{arch}"))
            .unwrap_or_else(|| pl.uri.clone());
        if !archive.exists() {
            if all_platforms {
                bail!("{label}: {} is missing", archive.display());
            }
            missing.push(label);
            continue;
        }
        pl.sha256 = file_sha256(&archive)?;
        platforms.push(pl);
    }
    plugin.spec.platforms = platforms;
    Ok(Rendered { plugin, missing })
}

/// The rendered manifest as YAML, headed by a line saying where it came from.
pub fn to_yaml(plugin: &Plugin) -> anyhow::Result<String> {
    let body = serde_norway::to_string(plugin)?;
    Ok(format!(
        "# Rendered by `cargo xtask` from orb8's krew.yaml template; do not edit.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = include_str!("../../krew.yaml");

    fn dist_with(test: &str, names: &[&str]) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("orb8-xtask-krew-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for n in names {
            std::fs::write(dir.join(n), n.as_bytes()).expect("write");
        }
        dir
    }

    fn archive(os: &str, arch: &str) -> String {
        format!("kubectl-orb8_v1.2.3_{os}_{arch}.tar.gz")
    }

    #[test]
    fn the_template_lists_every_release_platform_and_renders_valid() {
        let names: Vec<String> = RELEASE_PLATFORMS
            .iter()
            .map(|(os, arch)| archive(os, arch))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let dist = dist_with("all", &refs);
        let r = render(TEMPLATE, "v1.2.3", &dist, true).expect("renders");
        assert!(r.missing.is_empty());
        validate(&r.plugin, "orb8", true).expect("valid");
        assert_eq!(r.plugin.spec.version, "v1.2.3");
        let linux = &r.plugin.spec.platforms[0];
        assert_eq!(
            linux.uri,
            "https://github.com/orb8/orb8/releases/download/v1.2.3/kubectl-orb8_v1.2.3_linux_amd64.tar.gz"
        );
        // The checksum is the archive's: sha256 of its bytes (here, its own name).
        assert_eq!(
            linux.sha256,
            format!("{:x}", Sha256::digest(archive("linux", "amd64").as_bytes()))
        );
        let caveats = r.plugin.spec.caveats.as_deref().unwrap_or_default();
        for fact in ["5.8", "BTF", "manifests/clusterrole.yaml", "orb8-system"] {
            assert!(caveats.contains(fact), "caveats lack {fact}: {caveats}");
        }
        // The YAML round-trips.
        let text = to_yaml(&r.plugin).expect("yaml");
        assert_eq!(parse(&text).expect("parses"), r.plugin);
        let _ = std::fs::remove_dir_all(dist);
    }

    #[test]
    fn missing_archives_are_left_out_or_refused() {
        let dist = dist_with(
            "missing",
            &[&archive("linux", "amd64"), &archive("windows", "amd64")],
        );
        let r = render(TEMPLATE, "v1.2.3", &dist, false).expect("renders");
        assert_eq!(
            r.missing,
            vec![
                "linux/arm64",
                "darwin/amd64",
                "darwin/arm64",
                "windows/arm64"
            ]
        );
        validate(&r.plugin, "orb8", false).expect("valid without the others");
        let err = validate(&r.plugin, "orb8", true).expect_err("incomplete");
        assert!(err.to_string().contains("linux/arm64"), "{err}");
        let err = render(TEMPLATE, "v1.2.3", &dist, true).expect_err("incomplete");
        assert!(err.to_string().contains("linux/arm64"), "{err}");
        assert!(render(TEMPLATE, "1.2.3", &dist, false).is_err());
        let _ = std::fs::remove_dir_all(dist);
    }

    #[test]
    fn krews_rules_refuse_broken_manifests() {
        let dist = dist_with(
            "rules",
            &[&archive("linux", "amd64"), &archive("windows", "amd64")],
        );
        let good = render(TEMPLATE, "v1.2.3", &dist, false)
            .expect("renders")
            .plugin;
        let _ = std::fs::remove_dir_all(dist);
        let broken = |f: &dyn Fn(&mut Plugin), why: &str| {
            let mut p = good.clone();
            f(&mut p);
            let err = validate(&p, "orb8", false).expect_err(why);
            assert!(err.to_string().contains(why), "{why}: {err}");
        };
        broken(&|p| p.api_version = "v1".into(), "apiVersion");
        broken(&|p| p.kind = "Pod".into(), "kind");
        broken(&|p| p.metadata.name = "orb9".into(), "should be named");
        broken(&|p| p.spec.short_description = "a\nb".into(), "line break");
        broken(&|p| p.spec.version = "v1.2".into(), "version");
        broken(&|p| p.spec.platforms[0].sha256 = "ABC".into(), "sha256");
        broken(
            &|p| p.spec.platforms[0].sha256 = p.spec.platforms[0].sha256.to_uppercase(),
            "sha256",
        );
        broken(&|p| p.spec.platforms[0].bin.clear(), "no bin");
        broken(&|p| p.spec.platforms[0].uri = "http://x/y".into(), "https");
        broken(&|p| p.spec.platforms[1].bin = "kubectl-orb8".into(), ".exe");
        broken(
            &|p| {
                let first = p.spec.platforms[0].selector.clone();
                p.spec.platforms[1].selector = first;
                p.spec.platforms[1].bin = "x.exe".into();
            },
            "two platforms",
        );
        broken(
            &|p| {
                if let Some(l) = p.spec.platforms[0].selector.match_labels.as_mut() {
                    l.insert("distro".into(), "debian".into());
                }
            },
            "not supported",
        );
        broken(&|p| p.spec.platforms.clear(), "no platforms");
        broken(
            &|p| p.spec.caveats = Some(format!("{}\n", "word ".repeat(17))),
            "longer than 80",
        );
        broken(
            &|p| {
                if let Some(l) = p.spec.platforms[0].selector.match_labels.as_mut() {
                    l.insert("os".into(), "plan9".into());
                }
            },
            "no platform plan9/amd64",
        );
        assert!(validate(&good, "orb8", false).is_ok());
        // Unknown fields are refused when parsing.
        let text = to_yaml(&good)
            .expect("yaml")
            .replace("kind: Plugin", "kind: Plugin\nextra: 1");
        assert!(parse(&text).is_err());
    }
}
