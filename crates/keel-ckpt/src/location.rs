//! Where a checkpoint store is: a local (or NFS) folder, or a prefix in S3-compatible object
//! storage. Parsed once, from a path, a `file://` URL or an `s3://bucket/prefix` URL.

use std::path::{Path, PathBuf};

use crate::CkptError;

/// A checkpoint store's location: a local path (also from a `file://` URL) or an object-store
/// URL (`s3://bucket/prefix`, `s3a://...`, an `https://` S3 endpoint URL). [`Location`]'s
/// `Display` (and its serialized form) never shows credentials: a user name, password, query
/// or fragment in a URL is left out; the store is opened with the URL as given.
///
/// ```
/// use keel_ckpt::Location;
///
/// let local: Location = "runs/exp1/checkpoints".parse()?;
/// assert!(local.is_local());
/// let file: Location = "file:///nfs/ckpt".parse()?;
/// assert_eq!(file.local_path(), Some(std::path::Path::new("/nfs/ckpt")));
/// let s3: Location = "s3://key:secret@bucket/runs/exp1?token=t".parse()?;
/// assert!(!s3.is_local());
/// assert_eq!(s3.to_string(), "s3://bucket/runs/exp1");
/// # Ok::<(), keel_ckpt::CkptError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Location(pub(crate) Where);

#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Where {
    Local(PathBuf),
    Object {
        /// The URL as given (it may carry credentials).
        url: url::Url,
        /// The URL without them, for messages.
        shown: String,
    },
}

impl Location {
    /// A local (or NFS) folder.
    pub fn local(path: impl Into<PathBuf>) -> Self {
        Location(Where::Local(path.into()))
    }

    /// Whether the store is a folder on this machine (local disk or NFS), not object storage.
    pub fn is_local(&self) -> bool {
        matches!(self.0, Where::Local(_))
    }

    /// The folder of a local store; `None` for object storage.
    pub fn local_path(&self) -> Option<&Path> {
        match &self.0 {
            Where::Local(path) => Some(path),
            Where::Object { .. } => None,
        }
    }

    /// The object-store URL as given, credentials and all (to open the store, never to show);
    /// `None` for a local store.
    pub fn object_url(&self) -> Option<&url::Url> {
        match &self.0 {
            Where::Local(_) => None,
            Where::Object { url, .. } => Some(url),
        }
    }
}

/// `scheme://host[:port]/path` of a URL: no user name, password, query or fragment.
fn without_credentials(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

impl std::str::FromStr for Location {
    type Err = CkptError;

    fn from_str(text: &str) -> Result<Self, CkptError> {
        let refuse = |url: &url::Url, reason: String| CkptError::Location {
            location: without_credentials(url),
            reason,
        };
        if text.is_empty() {
            return Err(CkptError::Location {
                location: String::new(),
                reason: "empty: give a folder or an `s3://bucket/prefix` URL".into(),
            });
        }
        let url = match url::Url::parse(text) {
            Ok(url) if url.scheme().len() > 1 => url,
            // A path (also `C:\...`, whose drive letter parses as a scheme).
            _ => return Ok(Location::local(text)),
        };
        if url.scheme() == "file" {
            let path = url
                .to_file_path()
                .map_err(|()| refuse(&url, "not a local path".into()))?;
            return Ok(Location::local(path));
        }
        match object_store::ObjectStoreScheme::parse(&url) {
            Ok((object_store::ObjectStoreScheme::AmazonS3, path)) => {
                object_store::path::Path::parse(path).map_err(|e| refuse(&url, e.to_string()))?;
            }
            Ok(_) => {
                return Err(refuse(
                    &url,
                    "keel stores checkpoints in a folder, a `file://` URL or S3-compatible \
                     object storage (`s3://bucket/prefix`)"
                        .into(),
                ));
            }
            Err(error) => return Err(refuse(&url, error.to_string())),
        }
        let shown = without_credentials(&url);
        Ok(Location(Where::Object { url, shown }))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Where::Local(path) => write!(f, "{}", path.display()),
            Where::Object { shown, .. } => f.write_str(shown),
        }
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Location({self})")
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Self {
        Location::local(path)
    }
}

impl From<PathBuf> for Location {
    fn from(path: PathBuf) -> Self {
        Location::local(path)
    }
}

impl serde::Serialize for Location {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Location {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_file_urls_are_local() {
        for (text, path) in [
            ("runs/x/checkpoints", "runs/x/checkpoints"),
            ("/nfs/ckpt", "/nfs/ckpt"),
            ("file:///nfs/ckpt", "/nfs/ckpt"),
            ("C:\\ckpt", "C:\\ckpt"),
        ] {
            let location: Location = text.parse().unwrap();
            assert!(location.is_local(), "{text}");
            assert_eq!(location.local_path(), Some(Path::new(path)), "{text}");
            assert_eq!(location.object_url(), None);
        }
    }

    /// Display parses back to the same location, and never shows a URL's credentials.
    #[test]
    fn display_round_trips_without_credentials() {
        for (text, shown) in [
            ("s3://bucket/runs/x", "s3://bucket/runs/x"),
            ("s3://AKIA:s3cr3t@bucket/runs/x", "s3://bucket/runs/x"),
            ("s3://bucket/p?X-Amz-Security-Token=t#f", "s3://bucket/p"),
            ("s3a://bucket/p", "s3a://bucket/p"),
        ] {
            let location: Location = text.parse().unwrap();
            assert!(!location.is_local());
            assert_eq!(location.to_string(), shown);
            assert_eq!(format!("{location:?}"), format!("Location({shown})"));
            assert_eq!(serde_json::to_value(&location).unwrap(), shown);
            assert_eq!(location.object_url().unwrap().as_str(), text);
            let again: Location = shown.parse().unwrap();
            assert_eq!(again.to_string(), shown);
        }
        let local: Location = "/nfs/ckpt".parse().unwrap();
        assert_eq!(local.to_string().parse::<Location>().unwrap(), local);
    }

    #[test]
    fn unusable_locations_are_refused_without_credentials() {
        for (text, want) in [
            ("", "invalid checkpoint location ``: empty"),
            (
                "gs://user:pw@bucket/x",
                "invalid checkpoint location `gs://bucket/x`: keel stores checkpoints in",
            ),
            (
                "s3:///no-bucket",
                "invalid checkpoint location `s3:///no-bucket`",
            ),
            (
                "file://host/x",
                "invalid checkpoint location `file://host/x`: not a local path",
            ),
        ] {
            let error = text.parse::<Location>().unwrap_err().to_string();
            assert!(error.starts_with(want), "{text}: {error}");
            assert!(!error.contains("pw"), "{error}");
        }
    }
}
