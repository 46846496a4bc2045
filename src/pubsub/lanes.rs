//! Delivery lanes: one per thread that runs sockets, so that a broadcast wakes each socket
//! from its own thread.
//!
//! Waking a task that lives on another worker thread costs a lock on that worker's queue and
//! often a system call to rouse the thread; with thousands of subscribers per topic spread
//! over the workers, a broadcast paid that for every other subscriber. Instead, each
//! subscriber is filed under the lane of the thread it subscribed from (its socket's worker),
//! and a broadcast is handed over once per other lane: that lane's task then queues the frame
//! to its own sockets, whose wake-ups stay on their thread.
//!
//! Order: a lane runs its jobs in the order they were handed over, and a thread delivers
//! directly to its own lane only when that lane has nothing pending, so broadcasts reach each
//! subscriber in the order they were dispatched.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// Work handed to a lane.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// A thread's delivery lane.
#[derive(Clone)]
pub(crate) struct Lane {
    id: u64,
    jobs: mpsc::UnboundedSender<Job>,
    /// Jobs handed over and not yet run.
    pending: Arc<AtomicUsize>,
}

thread_local! {
    static CURRENT: RefCell<Option<Lane>> = const { RefCell::new(None) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Lane {
    /// This thread's lane, started on first use. None outside a tokio runtime.
    pub(crate) fn here() -> Option<Lane> {
        CURRENT.with(|current| {
            let mut current = current.borrow_mut();
            // A lane whose task is gone (its runtime shut down) is replaced.
            if let Some(lane) = current.as_ref().filter(|l| !l.jobs.is_closed()) {
                return Some(lane.clone());
            }
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
            let pending = Arc::new(AtomicUsize::new(0));
            let done = pending.clone();
            runtime.spawn(async move {
                while let Some(job) = rx.recv().await {
                    job();
                    done.fetch_sub(1, Ordering::AcqRel);
                }
            });
            let lane = Lane {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                jobs,
                pending,
            };
            *current = Some(lane.clone());
            Some(lane)
        })
    }

    /// The id of this thread's lane, if it has one (never starts one).
    pub(crate) fn current_id() -> Option<u64> {
        CURRENT.with(|current| current.borrow().as_ref().map(|l| l.id))
    }

    /// This lane's id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether a delivery from `here` (the dispatching thread's lane) may skip the queue:
    /// it is this lane's own thread and nothing handed over earlier is still waiting.
    pub(crate) fn direct_from(&self, here: Option<u64>) -> bool {
        here == Some(self.id) && self.pending.load(Ordering::Acquire) == 0
    }

    /// Hands `job` to the lane's task; gives it back if the lane is gone.
    pub(crate) fn hand_over(&self, job: Job) -> Result<(), Job> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.jobs.send(job).map_err(|e| {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            e.0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_thread_keeps_its_lane_and_jobs_run_in_order_on_it() {
        let lane = Lane::here().expect("inside a runtime");
        assert_eq!(Lane::here().map(|l| l.id()), Some(lane.id()));
        assert_eq!(Lane::current_id(), Some(lane.id()));
        assert!(lane.direct_from(Some(lane.id())));
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..3 {
            let tx = tx.clone();
            assert!(lane
                .hand_over(Box::new(move || tx.send(i).unwrap()))
                .is_ok());
        }
        assert!(!lane.direct_from(Some(lane.id())), "jobs pending");
        let got: Vec<i32> = vec![
            rx.recv().await.unwrap(),
            rx.recv().await.unwrap(),
            rx.recv().await.unwrap(),
        ];
        assert_eq!(got, vec![0, 1, 2]);
        assert!(
            !lane.direct_from(None),
            "another thread never skips the queue"
        );
    }

    #[test]
    fn no_lane_outside_a_runtime() {
        std::thread::spawn(|| assert!(Lane::here().is_none()))
            .join()
            .unwrap();
    }
}
