//! Work that must finish even if the request that started it goes away (metering, limits):
//! polled in place while the request waits, so the common case costs no task switch, and
//! handed to a task of its own when the request stops waiting or is dropped.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;

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

    /// Drives the work until it sends its answer on `answer`, whose sender it holds, and
    /// returns the answer (`None` if the work ends without sending one).
    ///
    /// While the work runs, the answer is looked for after each poll of it rather than
    /// waited for: a receiver that waits registers this task's waker, so the send, made
    /// while this task polls the work, would wake the task itself (what that costs:
    /// `server::in_place`, which would then poll the whole connection again). The sender
    /// must therefore stay in the work (not go to a task of its own): nothing else could
    /// send while the work waits.
    pub async fn until<T>(&mut self, answer: &mut oneshot::Receiver<T>) -> Option<T> {
        poll_fn(|cx| {
            if let Some(work) = self.work.as_mut() {
                if work.as_mut().poll(cx).is_ready() {
                    self.work = None;
                } else {
                    return match answer.try_recv() {
                        Ok(answer) => Poll::Ready(Some(answer)),
                        Err(TryRecvError::Empty) => Poll::Pending,
                        Err(TryRecvError::Closed) => Poll::Ready(None),
                    };
                }
            }
            Pin::new(&mut *answer).poll(cx).map(Result::ok)
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
                // Never answered: the caller waits until it is aborted.
                let (_never, mut answer) = oneshot::channel::<()>();
                let _ = work.until(&mut answer).await;
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
        let mut got_head = got_head;
        assert_eq!(work.until(&mut got_head).await.unwrap(), "head");
        drop(work);
        assert_eq!(got_tail.await.unwrap(), "tail");
    }

    #[test]
    fn the_answer_does_not_wake_the_task_that_waits_for_it() {
        let (woken, waker) = crate::server::Counted::waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let (go, gone) = oneshot::channel::<()>();
        let (respond, mut answer) = oneshot::channel();
        let mut work = Detachable::new(
            async move {
                let _ = gone.await;
                let _ = respond.send("answer");
                std::future::pending::<()>().await; // a stream's relay goes on
            },
            TaskTracker::new(),
        );
        let mut until = Box::pin(work.until(&mut answer));
        assert!(until.as_mut().poll(&mut cx).is_pending());
        assert_eq!(woken.wakes(), 0);
        go.send(()).unwrap();
        assert_eq!(woken.wakes(), 1, "the work's own wake-up");
        assert_eq!(until.as_mut().poll(&mut cx), Poll::Ready(Some("answer")));
        assert_eq!(woken.wakes(), 1, "the answer woke the task again");
    }

    #[test]
    fn work_that_drops_its_answer_unsent_gives_none_at_once() {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        for keeps_running in [false, true] {
            let (respond, mut answer) = oneshot::channel::<&str>();
            let mut work = Detachable::new(
                async move {
                    drop(respond);
                    if keeps_running {
                        std::future::pending::<()>().await;
                    }
                },
                TaskTracker::new(),
            );
            let mut until = Box::pin(work.until(&mut answer));
            assert!(
                until.as_mut().poll(&mut cx) == Poll::Ready(None),
                "keeps running: {keeps_running}"
            );
        }
    }
}
