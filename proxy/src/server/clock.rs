//! Write versions, one clock per volume.
//!
//! A version is a hybrid logical clock reading in nanoseconds since the Unix epoch: every write a
//! proxy accepts gets `max(now, client's version, last version of this volume + 1)`. So:
//! - writes through one proxy are ordered as they arrive, whatever the clients' clocks say;
//! - a client's version (it carries what the client has seen: see `client::version`) can only
//!   raise a version, never lower it, and may be at most `max_ahead` in front of this proxy's
//!   clock: a forged or wildly wrong header is refused instead of poisoning later writes;
//! - a client of one volume cannot move another volume's clock;
//! - versions stay near wall-clock time, far from `u64::MAX`, and arithmetic is checked anyway;
//! - a restart never moves a clock back: a ceiling above every version handed out is persisted
//!   (`clock.json` in the disk folder) before a version beyond it is used, and the cache's own
//!   versions seed the clock at start. The ceiling is moved on in the background once half its
//!   reserve is used, so a write does not wait for that file (a rename on a busy disk took
//!   155 ms, on the async thread and under the clock's lock).

use blockproxy_protocol::VolumeId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far the persisted ceiling runs ahead of the versions handed out: one small file write per
/// volume per this much clock progress.
const CEILING_RESERVE_NANOS: u64 = 2_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error(
        "{header} {version} is {ahead_ms} ms ahead of this proxy's clock; at most {max_ms} ms is accepted \
         (is the client's clock wrong, or the header forged?)"
    )]
    TooFarAhead { header: &'static str, version: u64, ahead_ms: u64, max_ms: u64 },
    #[error("persisting the version clock to {path}: {source}")]
    Persist {
        path: String,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct CeilingFile {
    /// Per volume, a version larger than every version handed out before the file was written.
    ceilings: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct State {
    last: HashMap<VolumeId, u64>,
    /// Ceilings known to be in `clock.json`: versions up to them may be handed out.
    ceilings: BTreeMap<String, u64>,
    /// Volumes whose ceiling is being moved on in the background.
    extending: HashSet<String>,
}

pub struct VolumeClocks {
    shared: Arc<Shared>,
    max_ahead: Duration,
}

struct Shared {
    state: Mutex<State>,
    /// What `clock.json` holds. Its lock is held while the file is written, so writes never
    /// interleave. A write takes it while holding `state`; the background takes `state` only
    /// after letting it go, so the two never wait on each other.
    in_file: Mutex<BTreeMap<String, u64>>,
    file: PathBuf,
    sync: bool,
    /// Writes that waited for the file (a version beyond the persisted ceiling).
    waited: std::sync::atomic::AtomicU64,
}

/// A ceiling to move on after the clock's lock is released.
struct Extension {
    volume: String,
    ceiling: u64,
}

pub fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl VolumeClocks {
    /// Loads the persisted ceilings from `folder/clock.json` and raises each volume's clock past
    /// them and past `seen` (the versions the cache holds).
    pub fn open(
        folder: &Path,
        max_ahead: Duration,
        sync: bool,
        seen: impl IntoIterator<Item = (VolumeId, u64)>,
    ) -> io::Result<Self> {
        let file = folder.join("clock.json");
        let ceilings: CeilingFile = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", file.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => CeilingFile::default(),
            Err(e) => return Err(e),
        };
        let mut last: HashMap<VolumeId, u64> = HashMap::new();
        for (volume, ceiling) in &ceilings.ceilings {
            if let Ok(v) = VolumeId::parse(volume) {
                last.insert(v, *ceiling);
            }
        }
        for (volume, version) in seen {
            let e = last.entry(volume).or_default();
            *e = (*e).max(version);
        }
        let state = State { last, ceilings: ceilings.ceilings.clone(), extending: HashSet::new() };
        let shared = Shared {
            state: Mutex::new(state),
            in_file: Mutex::new(ceilings.ceilings),
            file,
            sync,
            waited: Default::default(),
        };
        Ok(Self { shared: Arc::new(shared), max_ahead })
    }

    fn max_ahead_nanos(&self) -> u64 {
        u64::try_from(self.max_ahead.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The version for a write to `volume`, given the client's version header if it sent one.
    pub fn stamp(&self, volume: &VolumeId, client: Option<u64>) -> Result<u64, ClockError> {
        self.stamp_at(volume, client, now_nanos())
    }

    /// A version given exactly (a read repair carries a copy with its version): within the same
    /// bound as any client version, and raising the clock past it.
    pub fn admit_exact(&self, volume: &VolumeId, version: u64) -> Result<u64, ClockError> {
        self.check_bound(version, now_nanos())?;
        let mut state = self.shared.lock();
        let last = state.last.get(volume).copied().unwrap_or(0);
        let extension = self.shared.reserve(&mut state, volume, version)?;
        state.last.insert(volume.clone(), last.max(version));
        drop(state);
        self.extend(extension);
        Ok(version)
    }

    fn check_bound(&self, version: u64, now: u64) -> Result<(), ClockError> {
        let limit = now.saturating_add(self.max_ahead_nanos());
        if version > limit {
            return Err(ClockError::TooFarAhead {
                header: blockproxy_protocol::VERSION_HEADER,
                version,
                ahead_ms: (version - now) / 1_000_000,
                max_ms: self.max_ahead_nanos() / 1_000_000,
            });
        }
        Ok(())
    }

    fn stamp_at(&self, volume: &VolumeId, client: Option<u64>, now: u64) -> Result<u64, ClockError> {
        if let Some(v) = client {
            self.check_bound(v, now)?;
        }
        let mut state = self.shared.lock();
        let last = state.last.get(volume).copied().unwrap_or(0);
        // `last` is at most max_ahead beyond some past `now`, so `last + 1` cannot overflow; the
        // check is there for a clock.json edited by hand.
        let version = now.max(client.unwrap_or(0)).max(last.saturating_add(1)).max(1);
        let extension = self.shared.reserve(&mut state, volume, version)?;
        state.last.insert(volume.clone(), version);
        drop(state);
        self.extend(extension);
        Ok(version)
    }

    /// Raises `volume`'s clock past a version it did not hand out (a block fetched from the
    /// store). Versions beyond the accepted skew are ignored rather than let to poison the clock.
    pub fn observe(&self, volume: &VolumeId, version: u64) {
        if version > now_nanos().saturating_add(self.max_ahead_nanos()) {
            tracing::warn!(%volume, version, "ignoring a version far ahead of this proxy's clock");
            return;
        }
        let mut state = self.shared.lock();
        let e = state.last.entry(volume.clone()).or_default();
        *e = (*e).max(version);
    }

    /// Writes a moved-on ceiling on a blocking thread; without a runtime (unit tests), in place.
    fn extend(&self, extension: Option<Extension>) {
        let Some(Extension { volume, ceiling }) = extension else { return };
        let shared = Arc::clone(&self.shared);
        let job = move || {
            let written = shared.persist(&volume, ceiling);
            let mut state = shared.lock();
            state.extending.remove(&volume);
            match written {
                Ok(in_file) => raise(&mut state.ceilings, &in_file),
                // The next write past the old ceiling persists it itself, and fails if it cannot.
                Err(e) => tracing::warn!(%volume, error = %e, "moving the version clock's ceiling on failed"),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(job)),
            Err(_) => job(),
        }
    }

    #[cfg(test)]
    fn writes_that_waited(&self) -> u64 {
        self.shared.waited.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure `version` is below `volume`'s persisted ceiling. Beyond it, the new ceiling is
    /// written before the version may be handed out (under the clock's lock: rare, once the
    /// background keeps up). Past half the reserve, returns the ceiling to move on to.
    fn reserve(&self, state: &mut State, volume: &VolumeId, version: u64) -> Result<Option<Extension>, ClockError> {
        let key = volume.to_string();
        let ahead = version.saturating_add(CEILING_RESERVE_NANOS);
        match state.ceilings.get(&key) {
            Some(c) if *c >= version => {
                let extend = *c - version < CEILING_RESERVE_NANOS / 2 && state.extending.insert(key.clone());
                Ok(extend.then_some(Extension { volume: key, ceiling: ahead }))
            }
            _ => {
                self.waited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let in_file = self
                    .persist(&key, ahead)
                    .map_err(|source| ClockError::Persist { path: self.file.display().to_string(), source })?;
                raise(&mut state.ceilings, &in_file);
                Ok(None)
            }
        }
    }

    /// Raises `volume`'s ceiling in `clock.json` to at least `ceiling`; returns what the file
    /// holds. Never lowers a ceiling another writer put there.
    fn persist(&self, volume: &str, ceiling: u64) -> io::Result<BTreeMap<String, u64>> {
        let mut in_file = self.in_file.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = in_file.clone();
        let e = next.entry(volume.to_owned()).or_default();
        *e = (*e).max(ceiling);
        let text = serde_json::to_vec_pretty(&CeilingFile { ceilings: next.clone() }).map_err(io::Error::other)?;
        write_atomic(&self.file, &text, self.sync)?;
        *in_file = next.clone();
        Ok(next)
    }
}

/// Raises each ceiling in `to` to the one in `from`.
fn raise(to: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        let e = to.entry(k.clone()).or_default();
        *e = (*e).max(*v);
    }
}

fn write_atomic(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if sync && let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(s: &str) -> VolumeId {
        VolumeId::parse(s).unwrap()
    }

    fn clocks(dir: &Path) -> VolumeClocks {
        VolumeClocks::open(dir, Duration::from_secs(60), false, []).unwrap()
    }

    #[test]
    fn versions_of_one_volume_strictly_increase_and_follow_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let c = clocks(dir.path());
        let a = c.stamp(&vol("a"), None).unwrap();
        let b = c.stamp(&vol("a"), Some(1)).unwrap();
        assert!(b > a, "a client's old version never lowers a write's version");
        let ahead = now_nanos() + 30_000_000_000;
        let d = c.stamp(&vol("a"), Some(ahead)).unwrap();
        assert!(d >= ahead);
        assert!(c.stamp(&vol("a"), None).unwrap() > d);
    }

    #[test]
    fn a_version_far_ahead_is_refused_and_moves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = clocks(dir.path());
        let before = c.stamp(&vol("a"), None).unwrap();
        for forged in [u64::MAX, u64::MAX - 1, now_nanos() + 61_000_000_000] {
            let err = c.stamp(&vol("a"), Some(forged)).unwrap_err();
            assert!(matches!(err, ClockError::TooFarAhead { .. }), "{err}");
        }
        let after = c.stamp(&vol("a"), None).unwrap();
        assert!(after > before && after < now_nanos() + 1_000_000_000, "clock unaffected: {after}");
    }

    #[test]
    fn one_volume_cannot_move_another_volumes_clock() {
        let dir = tempfile::tempdir().unwrap();
        let c = clocks(dir.path());
        let ahead = now_nanos() + 50_000_000_000;
        assert!(c.stamp(&vol("b"), Some(ahead)).unwrap() >= ahead);
        let a = c.stamp(&vol("a"), None).unwrap();
        assert!(a < ahead, "volume a's clock was moved by volume b: {a} >= {ahead}");
    }

    #[test]
    fn a_restart_never_moves_a_clock_back() {
        let dir = tempfile::tempdir().unwrap();
        let ahead = now_nanos() + 50_000_000_000;
        let handed_out = {
            let c = clocks(dir.path());
            c.stamp(&vol("a"), Some(ahead)).unwrap()
        };
        let c = clocks(dir.path());
        assert!(c.stamp(&vol("a"), None).unwrap() > handed_out);
        // The cache's versions seed it too (a clock.json lost with the disk folder's other files
        // is not possible, but a version seen in the cache must never be reused).
        let dir2 = tempfile::tempdir().unwrap();
        let c = VolumeClocks::open(dir2.path(), Duration::from_secs(60), false, [(vol("a"), ahead)]).unwrap();
        assert!(c.stamp(&vol("a"), None).unwrap() > ahead);
    }

    fn in_file(dir: &Path) -> BTreeMap<String, u64> {
        serde_json::from_slice::<CeilingFile>(&std::fs::read(dir.join("clock.json")).unwrap()).unwrap().ceilings
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_ceiling_moves_on_in_the_background_before_writes_reach_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = clocks(dir.path());
        let first = c.stamp_at(&vol("a"), None, now_nanos()).unwrap();
        assert_eq!(c.writes_that_waited(), 1, "the first write persists a ceiling before it is acknowledged");
        let ceiling = in_file(dir.path())["a"];
        assert_eq!(ceiling, first + CEILING_RESERVE_NANOS);

        // Within the first half of the reserve nothing is written.
        c.stamp_at(&vol("a"), None, first + CEILING_RESERVE_NANOS / 4).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(in_file(dir.path())["a"], ceiling);

        // Past half of it, the write is answered from the old ceiling and the next is written
        // behind it.
        let later = c.stamp_at(&vol("a"), None, first + CEILING_RESERVE_NANOS / 2 + 1).unwrap();
        assert!(later < ceiling);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while in_file(dir.path())["a"] < later + CEILING_RESERVE_NANOS {
            assert!(std::time::Instant::now() < deadline, "the ceiling was not moved on: {:?}", in_file(dir.path()));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // So a write past the old ceiling does not wait for the file.
        let beyond = c.stamp_at(&vol("a"), None, ceiling + 1).unwrap();
        assert!(beyond > ceiling);
        assert_eq!(c.writes_that_waited(), 1, "a write waited for clock.json");

        // Another volume's ceiling, written meanwhile, is kept in the file.
        c.stamp_at(&vol("b"), None, now_nanos()).unwrap();
        let file = in_file(dir.path());
        assert!(file["a"] >= later + CEILING_RESERVE_NANOS && file.contains_key("b"), "{file:?}");
    }

    #[test]
    fn no_overflow_at_the_top_of_the_range() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("clock.json"), format!("{{\"ceilings\":{{\"a\":{}}}}}", u64::MAX)).unwrap();
        let c = clocks(dir.path());
        assert_eq!(c.stamp_at(&vol("a"), None, now_nanos()).unwrap(), u64::MAX);
    }
}
