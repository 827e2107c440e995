//! The policy store: the one place that changes policies, in the kernel
//! maps, in the daemon's model and in the state file, all or nothing.
//!
//! Order of writes, so the classifier never sees a half-made change: a new
//! or updated entry is written before the tenant's level mask gains its
//! bit; a removed entry loses its mask bit before it is deleted. When a
//! later step fails, the earlier ones are undone and the error returned.

use std::{collections::BTreeSet, path::PathBuf};

use log::{info, warn};
use vantage_common::{FlowKey, Level};

use crate::{
    maps::{Dataplane, DataplaneError},
    policy::{level_of, MapKind, PolicySet, PolicySpec, Resolved},
    state::{self, State, StateError, StoredPolicy, STATE_VERSION},
    tenant::TenantId,
};

/// Why a change was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A map is full.
    #[error(transparent)]
    Full(DataplaneError),
    /// Any other kernel map failure.
    #[error("update the kernel maps")]
    Dataplane(#[source] DataplaneError),
    /// The state file could not be written.
    #[error("persist the change")]
    State(#[source] StateError),
}

impl From<DataplaneError> for StoreError {
    fn from(e: DataplaneError) -> Self {
        match e {
            DataplaneError::Full { .. } => StoreError::Full(e),
            e => StoreError::Dataplane(e),
        }
    }
}

/// The result of an upsert.
#[derive(Debug, Clone, Copy)]
pub struct Upserted {
    /// The stored key.
    pub key: FlowKey,
    /// The map written.
    pub kind: MapKind,
    /// The level the entry occupies.
    pub level: Level,
    /// The stored parameters.
    pub spec: PolicySpec,
    /// Whether the key was new.
    pub created: bool,
    /// A runtime override that currently wins over this policy, if any.
    pub shadowed_by: Option<Resolved>,
}

/// The result of a removal.
#[derive(Debug, Clone, Copy)]
pub struct Removed {
    /// The removed key.
    pub key: FlowKey,
    /// Its parameters.
    pub spec: PolicySpec,
    /// What now applies to a flow equal to the removed key.
    pub fallback: Option<Resolved>,
}

/// Owns the data plane's policy maps and the daemon's model of them.
pub struct PolicyStore<D: Dataplane> {
    set: PolicySet,
    essential: BTreeSet<u64>,
    essential_from_flags: BTreeSet<u64>,
    dp: D,
    state_path: Option<PathBuf>,
    /// Tenants whose full-wildcard override the adaptive controller wrote.
    adaptive_owned: BTreeSet<u64>,
}

impl<D: Dataplane> PolicyStore<D> {
    /// A store over `dp`, persisting to `state_path` when given.
    pub fn new(dp: D, state_path: Option<PathBuf>) -> Self {
        PolicyStore {
            set: PolicySet::default(),
            essential: BTreeSet::new(),
            essential_from_flags: BTreeSet::new(),
            dp,
            state_path,
            adaptive_owned: BTreeSet::new(),
        }
    }

    /// Loads a saved state into the maps, without writing the file back.
    ///
    /// # Errors
    ///
    /// The first map failure (for example a state larger than the maps).
    pub fn restore(&mut self, state: &State) -> Result<(), StoreError> {
        let path = self.state_path.take();
        let result = (|| {
            for p in &state.policies {
                self.apply(MapKind::Base, p.key(), Some(p.spec))?;
            }
            self.essential.extend(state.essential.iter().map(|t| t.0));
            Ok(())
        })();
        self.state_path = path;
        if result.is_ok() && !state.policies.is_empty() {
            info!(
                "restored {} policies and {} essential tenants from the state file",
                state.policies.len(),
                state.essential.len()
            );
        }
        result
    }

    /// Marks tenants essential from the command line (never persisted).
    pub fn set_flag_essentials(&mut self, tenants: &[TenantId]) {
        self.essential_from_flags = tenants.iter().map(|t| t.0).collect();
    }

    /// Inserts or updates the policy at `key` in `kind`.
    ///
    /// An update keeps the entry's counters and bucket (clamped to the new
    /// burst). Base policies are persisted before this returns.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; nothing is changed then.
    pub fn upsert(
        &mut self,
        kind: MapKind,
        key: FlowKey,
        spec: PolicySpec,
    ) -> Result<Upserted, StoreError> {
        let up = self.upsert_inner(kind, key, spec)?;
        self.take_over(kind, &key);
        Ok(up)
    }

    /// Upserts every entry of `items`, all or nothing, persisting once.
    /// Returns how many keys were new.
    ///
    /// # Errors
    ///
    /// The first failure; every entry applied before it is rolled back.
    pub fn upsert_many(
        &mut self,
        items: &[(MapKind, FlowKey, PolicySpec)],
    ) -> Result<usize, StoreError> {
        let mut done: Vec<(MapKind, FlowKey, Option<PolicySpec>)> = Vec::with_capacity(items.len());
        let path = self.state_path.take();
        let mut result = Ok(());
        for &(kind, key, spec) in items {
            let old = self.set.get(kind, &key);
            if let Err(e) = self.apply(kind, key, Some(spec)) {
                result = Err(e);
                break;
            }
            done.push((kind, key, old));
        }
        self.state_path = path;
        if result.is_ok() {
            result = self.persist_if(items.iter().any(|(k, _, _)| *k == MapKind::Base));
        }
        if let Err(e) = result {
            for (kind, key, old) in done.into_iter().rev() {
                self.undo(kind, key, old);
            }
            return Err(e);
        }
        for (kind, key, _) in items {
            self.take_over(*kind, key);
        }
        info!("{} policies set in one batch", items.len());
        Ok(done.iter().filter(|(_, _, old)| old.is_none()).count())
    }

    fn upsert_inner(
        &mut self,
        kind: MapKind,
        key: FlowKey,
        spec: PolicySpec,
    ) -> Result<Upserted, StoreError> {
        let old = self.set.get(kind, &key);
        self.apply(kind, key, Some(spec))?;
        if let Err(e) = self.persist_if(kind == MapKind::Base) {
            self.undo(kind, key, old);
            return Err(e);
        }
        if old != Some(spec) {
            info!("policy {} {} set: {spec:?}", TenantId(key.cgroup_id), describe(kind, &key));
        }
        Ok(Upserted {
            key,
            kind,
            level: level_of(kind, &key),
            spec,
            created: old.is_none(),
            shadowed_by: if kind == MapKind::Base {
                self.set.shadowing_override(&key)
            } else {
                None
            },
        })
    }

    /// Removes the policy at `key` in `kind`; `Ok(None)` when absent.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; nothing is changed then.
    pub fn remove(&mut self, kind: MapKind, key: FlowKey) -> Result<Option<Removed>, StoreError> {
        let removed = self.remove_inner(kind, key)?;
        self.take_over(kind, &key);
        Ok(removed)
    }

    /// An operator change to an override the controller owns makes it the
    /// operator's: the controller will neither rewrite nor remove it.
    fn take_over(&mut self, kind: MapKind, key: &FlowKey) {
        if kind == MapKind::Override && *key == FlowKey::tenant(key.cgroup_id) {
            self.adaptive_owned.remove(&key.cgroup_id);
        }
    }

    fn remove_inner(&mut self, kind: MapKind, key: FlowKey) -> Result<Option<Removed>, StoreError> {
        let Some(spec) = self.set.get(kind, &key) else {
            return Ok(None);
        };
        self.apply(kind, key, None)?;
        if let Err(e) = self.persist_if(kind == MapKind::Base) {
            self.undo(kind, key, Some(spec));
            return Err(e);
        }
        info!("policy {} {} removed", TenantId(key.cgroup_id), describe(kind, &key));
        Ok(Some(Removed { key, spec, fallback: self.set.resolve(&key) }))
    }

    /// The effective policy for a packet with flow `flow`.
    pub fn resolve(&self, flow: &FlowKey) -> Option<Resolved> {
        self.set.resolve(flow)
    }

    /// The model of both maps.
    pub fn policies(&self) -> &PolicySet {
        &self.set
    }

    /// The data plane.
    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    /// Whether `tenant` is exempt from adaptive throttling.
    pub fn is_essential(&self, tenant: u64) -> bool {
        self.essential.contains(&tenant) || self.essential_from_flags.contains(&tenant)
    }

    /// Tenants marked essential through the API (persisted).
    pub fn api_essentials(&self) -> &BTreeSet<u64> {
        &self.essential
    }

    /// Sets whether `tenant` is essential; returns whether anything changed.
    ///
    /// # Errors
    ///
    /// [`StoreError::State`] when the change cannot be persisted; it is then
    /// not made.
    pub fn set_essential(&mut self, tenant: u64, essential: bool) -> Result<bool, StoreError> {
        let changed =
            if essential { self.essential.insert(tenant) } else { self.essential.remove(&tenant) };
        if !changed {
            return Ok(false);
        }
        if let Err(e) = self.persist_if(true) {
            if essential {
                self.essential.remove(&tenant);
            } else {
                self.essential.insert(tenant);
            }
            return Err(e);
        }
        info!("tenant {} essential: {essential}", TenantId(tenant));
        if essential && self.adaptive_owned.contains(&tenant) {
            // Released at once, not at the controller's next tick.
            self.remove_inner(MapKind::Override, FlowKey::tenant(tenant))?;
            self.adaptive_owned.remove(&tenant);
        }
        Ok(true)
    }

    /// Overrides the adaptive controller owns.
    pub fn adaptive_owned_count(&self) -> usize {
        self.adaptive_owned.len()
    }

    /// Brings the controller's overrides in line with `throttle`; see
    /// [`crate::adaptive::reconcile`]. Returns the number owned afterwards.
    ///
    /// # Errors
    ///
    /// The first failed change; earlier ones stay (and stay owned).
    pub fn adaptive_reconcile(
        &mut self,
        throttle: Option<PolicySpec>,
    ) -> Result<usize, StoreError> {
        let wanted: BTreeSet<u64> = match throttle {
            None => BTreeSet::new(),
            Some(_) => self
                .set
                .tenants(MapKind::Base)
                .into_iter()
                .filter(|t| !self.is_essential(*t))
                .collect(),
        };
        let release: Vec<u64> = self.adaptive_owned.difference(&wanted).copied().collect();
        for t in release {
            self.remove_inner(MapKind::Override, FlowKey::tenant(t))?;
            self.adaptive_owned.remove(&t);
        }
        if let Some(spec) = throttle {
            for t in wanted {
                let key = FlowKey::tenant(t);
                let owned = self.adaptive_owned.contains(&t);
                match self.set.get(MapKind::Override, &key) {
                    // Someone else's override: never touched.
                    Some(_) if !owned => continue,
                    Some(s) if s == spec => continue,
                    _ => {}
                }
                self.upsert_inner(MapKind::Override, key, spec)?;
                self.adaptive_owned.insert(t);
            }
        }
        Ok(self.adaptive_owned.len())
    }

    /// What the state file should hold now.
    pub fn state(&self) -> State {
        State {
            version: STATE_VERSION,
            policies: self.set.iter(MapKind::Base).map(|(k, s)| StoredPolicy::new(k, *s)).collect(),
            essential: self.essential.iter().map(|t| TenantId(*t)).collect(),
        }
    }

    /// Differences between the kernel maps and the model; empty when they
    /// agree exactly (entries, parameters and tenant masks).
    ///
    /// # Errors
    ///
    /// A failure to read a map.
    pub fn audit(&self) -> Result<Vec<String>, DataplaneError> {
        let mut diffs = Vec::new();
        for kind in [MapKind::Override, MapKind::Base] {
            let mut kernel = self.dp.entries(kind)?;
            kernel.sort_by_key(|(k, _)| *k);
            let model: Vec<_> = self.set.iter(kind).collect();
            if kernel.len() != model.len() {
                diffs.push(format!(
                    "{kind:?}: kernel has {} entries, model {}",
                    kernel.len(),
                    model.len()
                ));
            }
            for ((kk, kv), (mk, ms)) in kernel.iter().zip(model) {
                let want = ms.to_value();
                let same = kk == mk
                    && kv.rate_tokens_per_sec == want.rate_tokens_per_sec
                    && kv.burst_tokens == want.burst_tokens
                    && kv.enabled == want.enabled
                    && kv.interval_ns == want.interval_ns
                    && kv.tolerance_ns == want.tolerance_ns;
                if !same {
                    diffs.push(format!("{kind:?}: kernel {kk:?}={kv:?}, model {mk:?}={ms:?}"));
                }
            }
        }
        let mut masks = self.dp.masks()?;
        masks.sort_unstable();
        let mut want: Vec<(u64, u32)> = self
            .set
            .tenants(MapKind::Override)
            .into_iter()
            .chain(self.set.tenants(MapKind::Base))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|t| (t, self.set.level_mask(t)))
            .filter(|(_, m)| *m != 0)
            .collect();
        want.sort_unstable();
        if masks != want {
            diffs.push(format!("tenant masks: kernel {masks:?}, model {want:?}"));
        }
        Ok(diffs)
    }

    /// Puts `key` to `new` (or removes it) in kernel and model, in the
    /// order described in the module docs, undoing on failure.
    fn apply(
        &mut self,
        kind: MapKind,
        key: FlowKey,
        new: Option<PolicySpec>,
    ) -> Result<(), StoreError> {
        let tenant = key.cgroup_id;
        let old_spec = self.set.get(kind, &key);
        let old_value = self.dp.read(kind, &key)?;
        let old_mask = self.set.level_mask(tenant);

        if let Some(spec) = new {
            let value = match &old_value {
                Some(v) => spec.update_value(v, self.dp.bucket_now(&spec.to_value())),
                None => spec.to_value(),
            };
            self.dp.write(kind, &key, &value)?;
            self.set.insert(kind, key, spec);
        } else {
            self.set.remove(kind, &key);
        }

        let new_mask = self.set.level_mask(tenant);
        if new_mask != old_mask {
            if let Err(e) = self.dp.set_mask(tenant, new_mask) {
                self.restore_entry(kind, key, old_spec, old_value);
                return Err(e.into());
            }
        }

        if new.is_none() {
            if let Err(e) = self.dp.delete(kind, &key) {
                if let Err(e2) = self.dp.set_mask(tenant, old_mask) {
                    warn!("restore tenant levels of {}: {e2}", TenantId(tenant));
                }
                self.restore_entry(kind, key, old_spec, old_value);
                return Err(e.into());
            }
        }
        Ok(())
    }

    fn restore_entry(
        &mut self,
        kind: MapKind,
        key: FlowKey,
        spec: Option<PolicySpec>,
        value: Option<vantage_common::PolicyValue>,
    ) {
        let r = match value {
            Some(v) => self.dp.write(kind, &key, &v),
            None => self.dp.delete(kind, &key),
        };
        if let Err(e) = r {
            warn!("roll back policy {}: {e}", TenantId(key.cgroup_id));
        }
        match spec {
            Some(s) => self.set.insert(kind, key, s),
            None => self.set.remove(kind, &key),
        };
    }

    /// Reverts a change whose persistence failed.
    fn undo(&mut self, kind: MapKind, key: FlowKey, old: Option<PolicySpec>) {
        if let Err(e) = self.apply(kind, key, old) {
            warn!("roll back policy {} after a state file failure: {e}", TenantId(key.cgroup_id));
        }
    }

    fn persist_if(&self, needed: bool) -> Result<(), StoreError> {
        match &self.state_path {
            Some(path) if needed => state::save(path, &self.state()).map_err(StoreError::State),
            _ => Ok(()),
        }
    }
}

/// A short human description of a key's selectors.
pub fn describe(kind: MapKind, key: &FlowKey) -> String {
    let level = level_of(kind, key);
    let mut s = format!("level {} ({})", level.number(), level.name());
    if key.proto != 0 {
        s += &format!(" proto={}", crate::policy::proto_name(key.proto));
    }
    if key.dst_port != 0 {
        s += &format!(" port={}", key.dst_port);
    }
    if let Some(m) = crate::policy::method_name(key.http_method) {
        s += &format!(" method={m}");
    }
    if key.http_path_hash != 0 {
        s += &format!(" path_hash={}", key.http_path_hash);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::MemoryMaps;

    fn spec(rate: u64, enabled: bool) -> PolicySpec {
        PolicySpec { rate_tokens_per_sec: rate, burst_tokens: 5, enabled }
    }

    fn key(cg: u64, port: u16) -> FlowKey {
        FlowKey { cgroup_id: cg, proto: 6, dst_port: port, ..FlowKey::default() }
    }

    #[test]
    fn upsert_and_remove_keep_kernel_and_model_equal() {
        let mut store = PolicyStore::new(MemoryMaps::new(100), None);
        store.upsert(MapKind::Base, key(1, 80), spec(10, true)).expect("upsert");
        store.upsert(MapKind::Base, key(1, 81), spec(10, false)).expect("upsert disabled");
        store.upsert(MapKind::Override, FlowKey::tenant(1), spec(1, true)).expect("override");
        assert!(store.audit().expect("audit").is_empty());
        assert_eq!(store.dataplane().levels[&1], (1 << 5) | (1 << 8));

        let r = store.remove(MapKind::Override, FlowKey::tenant(1)).expect("remove");
        assert!(r.is_some());
        store.remove(MapKind::Base, key(1, 80)).expect("remove");
        assert!(store.audit().expect("audit").is_empty());
        // Only a disabled policy is left: no mask at all.
        assert!(!store.dataplane().levels.contains_key(&1));
        assert!(store.remove(MapKind::Base, key(9, 9)).expect("absent").is_none());
    }

    #[test]
    fn a_full_map_changes_nothing() {
        let mut store = PolicyStore::new(MemoryMaps::new(1), None);
        store.upsert(MapKind::Base, key(1, 80), spec(10, true)).expect("first fits");
        let err = store.upsert(MapKind::Base, key(1, 81), spec(10, true)).expect_err("full");
        assert!(matches!(err, StoreError::Full(_)), "{err}");
        assert_eq!(store.policies().len(MapKind::Base), 1);
        assert!(store.audit().expect("audit").is_empty());
        // Updating the existing key still works at capacity.
        store.upsert(MapKind::Base, key(1, 80), spec(20, true)).expect("update fits");
    }

    #[test]
    fn a_failed_mask_write_rolls_the_entry_back() {
        let mut store = PolicyStore::new(MemoryMaps::new(10), None);
        store.dp.fail_masks = true;
        store.upsert(MapKind::Base, key(1, 80), spec(10, true)).expect_err("mask fails");
        assert!(store.dataplane().maps.is_empty());
        assert_eq!(store.policies().len(MapKind::Base), 0);
    }

    #[test]
    fn an_unwritable_state_file_refuses_the_change() {
        let path = PathBuf::from("/proc/vantage-cannot-write/state.json");
        let mut store = PolicyStore::new(MemoryMaps::new(10), Some(path));
        let err = store.upsert(MapKind::Base, key(1, 80), spec(10, true)).expect_err("no write");
        assert!(matches!(err, StoreError::State(_)));
        assert!(store.dataplane().maps.is_empty());
        assert!(store.audit().expect("audit").is_empty());
        assert!(store.set_essential(3, true).is_err());
        assert!(!store.is_essential(3));
    }

    #[test]
    fn a_batch_is_all_or_nothing() {
        let mut store = PolicyStore::new(MemoryMaps::new(3), None);
        store.upsert(MapKind::Base, key(1, 80), spec(1, true)).expect("one");
        let batch: Vec<_> = (81..84).map(|p| (MapKind::Base, key(1, p), spec(2, true))).collect();
        // Three new keys do not fit next to the existing one.
        assert!(matches!(store.upsert_many(&batch), Err(StoreError::Full(_))));
        assert_eq!(store.policies().len(MapKind::Base), 1);
        assert!(store.audit().expect("audit").is_empty());

        let batch = [
            (MapKind::Base, key(1, 80), spec(5, true)),
            (MapKind::Base, key(1, 81), spec(5, true)),
        ];
        assert_eq!(store.upsert_many(&batch).expect("fits"), 1, "one new, one updated");
        assert_eq!(store.policies().get(MapKind::Base, &key(1, 80)), Some(spec(5, true)));
        assert!(store.audit().expect("audit").is_empty());
    }

    #[test]
    fn shadowing_is_reported() {
        let mut store = PolicyStore::new(MemoryMaps::new(10), None);
        store.upsert(MapKind::Override, FlowKey::tenant(1), spec(1, true)).expect("override");
        let up = store.upsert(MapKind::Base, key(1, 80), spec(10, true)).expect("base");
        assert_eq!(up.level.number(), 8);
        assert_eq!(up.shadowed_by.map(|r| r.level.number()), Some(5));
        let gone = store.remove(MapKind::Base, key(1, 80)).expect("rm").expect("existed");
        assert_eq!(gone.fallback.map(|r| r.level.number()), Some(5));
    }
}
