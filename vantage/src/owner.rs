//! The map owner: one thread holds the [`PolicyStore`]; every other thread
//! (HTTP workers, the adaptive controller) sends it jobs over a channel and
//! waits for the answer. Changes are therefore applied one at a time, in
//! arrival order, with no lock shared with the data-plane code.

use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, unbounded, Sender};

use crate::{maps::Dataplane, store::PolicyStore};

type Job<D> = Box<dyn FnOnce(&mut PolicyStore<D>) + Send>;

/// The owner thread has stopped; the daemon is shutting down.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the policy store is shutting down")]
pub struct OwnerGone;

/// A cloneable handle for sending jobs to the owner thread.
pub struct Owner<D: Dataplane> {
    tx: Sender<Job<D>>,
}

impl<D: Dataplane> Clone for Owner<D> {
    fn clone(&self) -> Self {
        Owner { tx: self.tx.clone() }
    }
}

impl<D: Dataplane + 'static> Owner<D> {
    /// Starts the owner thread with `store`. The thread ends, handing the
    /// store back through its join handle, once every `Owner` is dropped.
    ///
    /// # Errors
    ///
    /// The thread could not be spawned.
    pub fn spawn(mut store: PolicyStore<D>) -> std::io::Result<(Self, JoinHandle<PolicyStore<D>>)> {
        let (tx, rx) = unbounded::<Job<D>>();
        let handle = thread::Builder::new().name("map-owner".into()).spawn(move || {
            for job in rx {
                job(&mut store);
            }
            store
        })?;
        Ok((Owner { tx }, handle))
    }

    /// Runs `f` on the owner thread and returns its result.
    ///
    /// # Errors
    ///
    /// [`OwnerGone`] when the owner has stopped.
    pub fn call<R, F>(&self, f: F) -> Result<R, OwnerGone>
    where
        R: Send + 'static,
        F: FnOnce(&mut PolicyStore<D>) -> R + Send + 'static,
    {
        let (reply_tx, reply_rx) = bounded(1);
        let job: Job<D> = Box::new(move |store| {
            // The caller may have given up waiting; nothing to do then.
            let _ = reply_tx.send(f(store));
        });
        self.tx.send(job).map_err(|_| OwnerGone)?;
        reply_rx.recv().map_err(|_| OwnerGone)
    }
}
