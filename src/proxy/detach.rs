//! Work that must finish even if the request that started it goes away (metering, limits):
//! polled in place while the request waits, so the common case costs no task switch, and
//! handed to a task of its own when the request stops waiting or is dropped.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};

use tokio_util::task::TaskTracker;

type Work = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

pub struct Detachable {
    /// `None` once the work is done (or handed to a task).
    work: Option<Work>,
    /// Where the rest of the work goes; shutdown waits for it.
    tasks: TaskTracker,
}

impl Detachable {
    pub fn new(work: impl Future<Output = ()> + Send + 'static, tasks: TaskTracker) -> Self {
        Detachable {
            work: Some(Box::pin(work)),
            tasks,
        }
    }

    /// Drives the work alongside `wait` until `wait` completes.
    pub async fn until<T>(&mut self, wait: impl Future<Output = T>) -> T {
        let mut wait = pin!(wait);
        poll_fn(|cx| {
            if let Some(work) = self.work.as_mut()
                && work.as_mut().poll(cx).is_ready()
            {
                self.work = None;
            }
            wait.as_mut().poll(cx)
        })
        .await
    }
}

impl Drop for Detachable {
    fn drop(&mut self) {
        // Outside a runtime (only as it is torn down) nothing could run the rest anyway.
        if let Some(work) = self.work.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            self.tasks.spawn(work);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn work_finishes_after_its_caller_is_dropped() {
        let tasks = TaskTracker::new();
        let finished = Arc::new(AtomicBool::new(false));
        let (started, is_started) = tokio::sync::oneshot::channel();
        let done = finished.clone();
        let caller = tokio::spawn({
            let tasks = tasks.clone();
            async move {
                let mut work = Detachable::new(
                    async move {
                        let _ = started.send(());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        done.store(true, Ordering::SeqCst);
                    },
                    tasks,
                );
                work.until(std::future::pending::<()>()).await;
            }
        });
        is_started.await.unwrap();
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        tasks.close();
        tasks.wait().await;
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn work_that_outlives_the_wait_goes_on_in_a_task() {
        let tasks = TaskTracker::new();
        let (head, got_head) = tokio::sync::oneshot::channel();
        let (tail, got_tail) = tokio::sync::oneshot::channel();
        let mut work = Detachable::new(
            async move {
                let _ = head.send("head");
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tail.send("tail");
            },
            tasks.clone(),
        );
        assert_eq!(work.until(got_head).await.unwrap(), "head");
        drop(work);
        assert_eq!(got_tail.await.unwrap(), "tail");
    }
}
