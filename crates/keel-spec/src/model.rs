//! The typed environment: what an `environment.yml` asks for.

use std::str::FromStr;

use indexmap::IndexMap;
use rattler_conda_types::{
    EnvironmentYaml, MatchSpec, MatchSpecOrSubSection, NamedChannelOrUrl, ParseStrictness, Subdir,
};
use serde::{Serialize, Serializer};

use crate::pip::PipEntry;
use crate::selector::Selector;
use crate::source::Location;

/// A parsed `environment.yml`: channels and dependencies in the order they were written.
///
/// Two specs compare equal when they ask for the same things; where each part was written
/// ([`Location`]) is not part of the comparison, so a spec written out and read back is equal
/// to the original.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct EnvironmentSpec {
    /// The `name:` of the environment.
    pub name: Option<String>,
    /// The `channels:` in priority order, highest first.
    pub channels: Vec<ChannelEntry>,
    /// The `dependencies:`: conda specs and sub-sections (`pip:`) in the order written.
    pub dependencies: Vec<DependencyEntry>,
    /// The `variables:` set in the environment on activation, in the order written.
    pub variables: IndexMap<String, String>,
    /// The `prefix:` line that `conda env export` writes.
    pub prefix: Option<String>,
    /// conda-lock's `platforms:` extension: the platforms to lock for.
    #[serde(serialize_with = "serialize_platforms")]
    pub platforms: Vec<Subdir>,
    /// conda-lock's `category:` extension (for example `main` or `dev`).
    pub category: Option<String>,
}

/// One entry of `channels:`.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelEntry {
    /// The text as written, environment variables unexpanded (`${CONDA_TOKEN}` stays a
    /// reference, so that writing the file back never leaks a secret).
    pub source: String,
    /// What kind of channel this is.
    pub kind: ChannelKind,
    /// Where it was written; `None` for entries built in code.
    #[serde(skip)]
    pub location: Option<Location>,
}

impl PartialEq for ChannelEntry {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.kind == other.kind
    }
}

/// What a channel entry refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "kebab-case")]
pub enum ChannelKind {
    /// `nodefaults`: the `defaults` channels are not added.
    NoDefaults,
    /// `defaults`: Anaconda's default channels.
    Defaults,
    /// A channel name on the channel alias: `conda-forge`, `conda-forge/label/dev`.
    Name(String),
    /// A full URL: `https://…`, `file:///…`, `s3://…`.
    Url(String),
    /// A local directory: `./channel`, `/opt/channel`, `~/channel`.
    Path(String),
}

impl ChannelKind {
    /// Classifies a channel as conda does; `source` is as written.
    pub fn classify(source: &str) -> Self {
        match source {
            "nodefaults" => Self::NoDefaults,
            "defaults" => Self::Defaults,
            _ => match NamedChannelOrUrl::from_str(source) {
                Ok(NamedChannelOrUrl::Url(url)) => Self::Url(url.to_string()),
                Ok(NamedChannelOrUrl::Path(path)) => Self::Path(path.to_string()),
                // A URL that does not parse yet (it may still hold `${VAR}`) stays as written.
                Ok(NamedChannelOrUrl::Name(name)) => Self::Name(name),
                Err(_) if source.contains("://") => Self::Url(source.to_owned()),
                Err(_) => Self::Name(source.to_owned()),
            },
        }
    }
}

impl ChannelEntry {
    /// A channel entry for `source`, classified.
    pub fn new(source: impl Into<String>) -> Self {
        let source = source.into();
        Self {
            kind: ChannelKind::classify(&source),
            source,
            location: None,
        }
    }

    /// The channel with `$VAR` and `${VAR}` replaced by `lookup` (conda expands environment
    /// variables in channels; a variable `lookup` does not know stays as written, as in
    /// Python's `os.path.expandvars`).
    pub fn expand_vars(&self, lookup: impl Fn(&str) -> Option<String>) -> String {
        expand_vars(&self.source, lookup)
    }
}

/// One entry of `dependencies:`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DependencyEntry {
    /// A conda package spec, such as `python=3.10` or `pytorch::pytorch >=2`.
    Conda(Box<CondaDependency>),
    /// The `- pip:` sub-section.
    Pip(PipSection),
    /// Another sub-section (`- npm: [...]`). Neither conda nor keel installs these; they are
    /// kept so that writing the file back loses nothing.
    Other(OtherSection),
}

/// A conda dependency: the text as written and the MatchSpec it means.
///
/// It serializes with the spec shown as written where rattler would print it otherwise:
/// rattler's `Version` drops leading zeros (`2022.07.19` prints as `2022.7.19`), so the
/// `spec` and `version` shown are [`CondaDependency::display_spec`] and
/// [`CondaDependency::display_version`].
#[derive(Debug, Clone)]
pub struct CondaDependency {
    /// The text as written, inline `# comment` included.
    pub source: String,
    /// The spec, parsed leniently as conda does.
    pub spec: MatchSpec,
    /// A platform selector: conda-lock's `# [linux64]` comment or mamba's `sel(linux):` key.
    pub selector: Option<Selector>,
    /// Where it was written.
    pub location: Option<Location>,
}

impl Serialize for CondaDependency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Parts {
            spec: String,
            name: String,
            version: Option<String>,
            build: Option<String>,
            channel: Option<String>,
            subdir: Option<String>,
        }
        #[derive(Serialize)]
        struct Json<'a> {
            source: &'a str,
            spec: Parts,
            selector: &'a Option<Selector>,
        }
        let spec = &self.spec;
        Json {
            source: &self.source,
            spec: Parts {
                spec: self.display_spec(),
                name: spec.name.to_string(),
                version: self.display_version(),
                build: spec.build.as_ref().map(ToString::to_string),
                channel: spec.channel.as_ref().map(|c| c.canonical_name()),
                subdir: spec.subdir.clone(),
            },
            selector: &self.selector,
        }
        .serialize(s)
    }
}

impl PartialEq for CondaDependency {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.spec == other.spec && self.selector == other.selector
    }
}

impl CondaDependency {
    /// The version constraint as rattler reads it, each version number written as in the
    /// file: `re2=2022.04.01=h295c915_0` gives `==2022.04.01` where rattler prints
    /// `==2022.4.1`. `None` without a version.
    ///
    /// ```
    /// let spec = keel_spec::CondaDependency::parse("bioconda::fastqc=0.12.01").unwrap();
    /// assert_eq!(spec.display_version().as_deref(), Some("0.12.01.*"));
    /// assert_eq!(spec.display_spec(), "bioconda::fastqc 0.12.01.*");
    /// ```
    pub fn display_version(&self) -> Option<String> {
        let version = self.spec.version.as_ref()?.to_string();
        Some(self.with_written_numbers(&version))
    }

    /// The MatchSpec as rattler prints it, with each version number as written (see
    /// [`display_version`](Self::display_version)); it parses back to the same spec.
    pub fn display_spec(&self) -> String {
        let printed = self.spec.to_string();
        let Some(version) = self.spec.version.as_ref().map(ToString::to_string) else {
            return printed;
        };
        let written = self.with_written_numbers(&version);
        if written == version {
            return printed;
        }
        let candidate = printed.replacen(&version, &written, 1);
        match MatchSpec::from_str(&candidate, ParseStrictness::Lenient) {
            Ok(reparsed) if reparsed == self.spec => candidate,
            _ => printed,
        }
    }

    /// `printed` (rattler's text of the version constraint) with every version number that
    /// the source writes differently (`07` for `7`) put back as written. One pass over each
    /// text, so a hostile line costs no more than its length.
    fn with_written_numbers(&self, printed: &str) -> String {
        let is_version_char =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '!' | '+');
        let source = self.source.split('#').next().unwrap_or_default();
        // rattler's text of each version number in the source -> the number as written.
        let mut written: std::collections::HashMap<String, &str> = Default::default();
        for token in source.split(|c: char| !is_version_char(c)) {
            let token = token.trim_end_matches('.');
            if !token.starts_with(|c: char| c.is_ascii_digit()) {
                continue;
            }
            if let Ok(version) = rattler_conda_types::Version::from_str(token) {
                let normal = version.to_string();
                if normal != token {
                    written.entry(normal).or_insert(token);
                }
            }
        }
        if written.is_empty() {
            return printed.to_owned();
        }
        let mut out = String::with_capacity(printed.len());
        let mut rest = printed;
        while !rest.is_empty() {
            let end = rest
                .find(|c: char| !is_version_char(c))
                .unwrap_or(rest.len());
            if end == 0 {
                let c = rest.chars().next().unwrap_or_default();
                out.push(c);
                rest = &rest[c.len_utf8()..];
                continue;
            }
            let token = &rest[..end];
            // `2022.7.19.*` prints a trailing `.` before the `*`.
            let (number, dot) = match token.strip_suffix('.') {
                Some(number) => (number, "."),
                None => (token, ""),
            };
            match written.get(number) {
                Some(as_written) => {
                    out.push_str(as_written);
                    out.push_str(dot);
                }
                None => out.push_str(token),
            }
            rest = &rest[end..];
        }
        out
    }

    /// Parses `source` as a conda dependency written in an environment file.
    pub fn parse(source: &str) -> Result<Self, rattler_conda_types::ParseMatchSpecError> {
        Ok(Self {
            spec: MatchSpec::from_str(source, ParseStrictness::Lenient)?,
            source: source.to_owned(),
            selector: None,
            location: None,
        })
    }
}

/// The `- pip:` sub-section, line by line.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct PipSection {
    /// Its lines in the order written.
    pub entries: Vec<PipEntry>,
    /// Where the `pip:` key was written.
    #[serde(skip)]
    pub location: Option<Location>,
}

/// A sub-section for another installer, kept as written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OtherSection {
    /// The key, such as `npm`.
    pub name: String,
    /// Its lines as written.
    pub entries: Vec<String>,
}

impl EnvironmentSpec {
    /// The conda dependencies, in order.
    pub fn conda_dependencies(&self) -> impl Iterator<Item = &CondaDependency> {
        self.dependencies.iter().filter_map(|entry| match entry {
            DependencyEntry::Conda(dependency) => Some(&**dependency),
            _ => None,
        })
    }

    /// The pip entries conda installs: those of the last `- pip:` sub-section. conda reads
    /// the `dependencies` list into a dict, one `update` per sub-section
    /// (`Dependencies.parse` in `conda/env/env.py`), so a later `pip:` replaces an earlier
    /// one and nothing of the earlier ones is installed; keel warns about each of them.
    pub fn pip_entries(&self) -> impl Iterator<Item = &PipEntry> {
        self.pip_section()
            .into_iter()
            .flat_map(|section| section.entries.iter())
    }

    /// The `- pip:` sub-section conda installs: the last one.
    pub fn pip_section(&self) -> Option<&PipSection> {
        self.dependencies
            .iter()
            .rev()
            .find_map(|entry| match entry {
                DependencyEntry::Pip(section) => Some(section),
                _ => None,
            })
    }

    /// Whether the file has a pip sub-section (even an empty one) but lists no `pip`
    /// package, in which case conda installs `pip` anyway (and warns): `validate_keys` in
    /// conda's `conda/env/env.py`.
    pub fn needs_implicit_pip(&self) -> bool {
        let has_pip_section = self.pip_section().is_some();
        has_pip_section
            && !self
                .conda_dependencies()
                .any(|dependency| matches_name(&dependency.spec, "pip"))
    }

    /// The conda MatchSpecs to solve for `platform`: selectors applied, and `pip` added where
    /// conda adds it. With `platform` `None` every selector is ignored and all specs are
    /// returned.
    pub fn match_specs_for(&self, platform: Option<Subdir>) -> Vec<MatchSpec> {
        let mut specs: Vec<MatchSpec> = self
            .conda_dependencies()
            .filter(|dependency| match (&dependency.selector, platform) {
                (Some(selector), Some(platform)) => selector.matches(platform),
                _ => true,
            })
            .map(|dependency| dependency.spec.clone())
            .collect();
        if self.needs_implicit_pip() {
            specs.insert(
                0,
                MatchSpec::from_str("pip", ParseStrictness::Lenient)
                    .expect("`pip` is a valid match spec"),
            );
        }
        specs
    }

    /// The same environment as rattler's [`EnvironmentYaml`], for crates that take that type.
    /// Selectors and conda-lock's extensions have no place there and are dropped; `nodefaults`
    /// stays a channel name, as rattler reads it.
    pub fn to_environment_yaml(&self) -> EnvironmentYaml {
        EnvironmentYaml {
            name: self.name.clone(),
            prefix: self.prefix.as_ref().map(Into::into),
            channels: self
                .channels
                .iter()
                .filter_map(|channel| NamedChannelOrUrl::from_str(&channel.source).ok())
                .collect(),
            dependencies: self
                .dependencies
                .iter()
                .map(|entry| match entry {
                    DependencyEntry::Conda(dependency) => {
                        MatchSpecOrSubSection::MatchSpec(Box::new(dependency.spec.clone()))
                    }
                    DependencyEntry::Pip(section) => MatchSpecOrSubSection::SubSection(
                        "pip".to_owned(),
                        section
                            .entries
                            .iter()
                            .map(|entry| entry.source.clone())
                            .collect(),
                    ),
                    DependencyEntry::Other(section) => MatchSpecOrSubSection::SubSection(
                        section.name.clone(),
                        section.entries.clone(),
                    ),
                })
                .collect(),
            variables: self.variables.clone(),
        }
    }

    /// Forgets where each part was written, as for a spec built in code.
    pub fn clear_locations(&mut self) {
        for channel in &mut self.channels {
            channel.location = None;
        }
        for entry in &mut self.dependencies {
            match entry {
                DependencyEntry::Conda(dependency) => dependency.location = None,
                DependencyEntry::Pip(section) => {
                    section.location = None;
                    for entry in &mut section.entries {
                        entry.location = None;
                    }
                }
                DependencyEntry::Other(_) => {}
            }
        }
    }
}

fn matches_name(spec: &MatchSpec, name: &str) -> bool {
    spec.name.to_string() == name
}

/// Expands `$VAR` and `${VAR}` like Python's `os.path.expandvars`.
pub(crate) fn expand_vars(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match (!name.is_empty()).then(|| lookup(name)).flatten() {
            Some(value) => out.push_str(&value),
            None => out.push_str(&rest[dollar..dollar + 1 + consumed]),
        }
        rest = &rest[dollar + 1 + consumed..];
    }
    out.push_str(rest);
    out
}

fn serialize_platforms<S: Serializer>(platforms: &[Subdir], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(platforms.iter().map(|p| p.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_vars_like_python() {
        let lookup = |name: &str| (name == "TOKEN").then(|| "s3cr3t".to_owned());
        assert_eq!(
            expand_vars("https://x/t/${TOKEN}/$TOKEN/${MISSING}/$", lookup),
            "https://x/t/s3cr3t/s3cr3t/${MISSING}/$"
        );
    }

    #[test]
    fn classifies_channels() {
        assert_eq!(ChannelKind::classify("nodefaults"), ChannelKind::NoDefaults);
        assert_eq!(
            ChannelKind::classify("conda-forge/label/dev"),
            ChannelKind::Name("conda-forge/label/dev".into())
        );
        assert!(matches!(
            ChannelKind::classify("file:///srv/channel"),
            ChannelKind::Url(_)
        ));
        assert!(matches!(
            ChannelKind::classify("./channel"),
            ChannelKind::Path(_)
        ));
    }
}
