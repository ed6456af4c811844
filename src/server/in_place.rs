//! A connection's task, polled again at once when it wakes itself.
//!
//! hyper hands a request's body from its connection loop to the service through a channel,
//! and both run in the connection's task: when the service takes the body, the channel
//! wakes the loop, so the task wakes itself while it is being polled. tokio takes such a
//! wake for a yield: it queues the task behind the others and wakes a second worker thread
//! to take it. That is a futex call and a trip through the scheduler for every request,
//! and, with one request at a time, a sleeping core woken for nothing, on the machine the
//! request is waiting for. Here the task is polled again in place instead, up to
//! `AGAIN` times a turn and while tokio's budget for the turn lasts; a wake from anywhere
//! else goes to tokio as before.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Polls in one turn at most; past them (or once tokio's budget for the turn is spent) the
/// task yields to tokio as a self-wake would.
const AGAIN: usize = 16;

/// The inner future is not being polled: a wake goes to tokio.
const IDLE: u8 = 0;
/// It is being polled: a wake is noted, and it is polled again when it returns.
const POLLING: u8 = 1;
/// It was woken while being polled.
const WOKEN: u8 = 2;

pin_project_lite::pin_project! {
    /// `future`, polled again in place when it wakes itself (see the module's header).
    pub struct InPlace<F> {
        #[pin]
        future: F,
        shared: Arc<Shared>,
        waker: Waker,
    }
}

struct Shared {
    state: AtomicU8,
    /// The task's own waker, as tokio last gave it.
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match (self.state).compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) | Err(WOKEN) => {}
            // Idle: this is an outside wake. (Should a poll begin in between, tokio gets a
            // self-wake after all: a yield, as without this wrapper.)
            Err(_) => self.task.wake(),
        }
    }
}

impl<F: Future> InPlace<F> {
    pub fn new(future: F) -> InPlace<F> {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        InPlace {
            future,
            waker: Waker::from(shared.clone()),
            shared,
        }
    }
}

impl<F: Future> Future for InPlace<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        this.shared.task.register(cx.waker());
        let mut inner = Context::from_waker(this.waker);
        for _ in 0..AGAIN {
            this.shared.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(output) = this.future.as_mut().poll(&mut inner) {
                this.shared.state.store(IDLE, Ordering::Release);
                return Poll::Ready(output);
            }
            let idle = this.shared.state.compare_exchange(
                POLLING,
                IDLE,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if idle.is_ok() {
                return Poll::Pending;
            }
            // Woken while polled: what woke it is ready now, unless the wake was tokio
            // telling the task its turn's budget is spent: then it yields.
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
        }
        this.shared.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Counts the wakes of the task it stands for: the tests of tasks that must not wake
/// themselves (here and in `proxy::detach`) poll with it.
#[cfg(test)]
pub(crate) struct Counted(std::sync::atomic::AtomicUsize);

#[cfg(test)]
impl Counted {
    pub(crate) fn waker() -> (Arc<Counted>, Waker) {
        let counted = Arc::new(Counted(std::sync::atomic::AtomicUsize::new(0)));
        (counted.clone(), Waker::from(counted))
    }

    pub(crate) fn wakes(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
impl Wake for Counted {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Wakes itself on each of its first `times` polls, then is ready with its poll count.
    fn waking_itself(times: usize) -> impl Future<Output = usize> {
        let mut polls = 0;
        std::future::poll_fn(move |cx| {
            polls += 1;
            if polls > times {
                return Poll::Ready(polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
    }

    #[test]
    fn a_future_that_wakes_itself_is_polled_again_without_waking_its_task() {
        let (woken, waker) = Counted::waker();
        let mut cx = Context::from_waker(&waker);
        let mut task = Box::pin(InPlace::new(waking_itself(3)));
        assert_eq!(task.as_mut().poll(&mut cx), Poll::Ready(4));
        assert_eq!(woken.wakes(), 0);
    }

    #[test]
    fn past_its_budget_it_yields_with_a_wake_and_goes_on_next_turn() {
        let (woken, waker) = Counted::waker();
        let mut cx = Context::from_waker(&waker);
        let mut task = Box::pin(InPlace::new(waking_itself(AGAIN + 2)));
        assert!(task.as_mut().poll(&mut cx).is_pending());
        assert_eq!(woken.wakes(), 1, "owed its wake, it yields");
        assert_eq!(task.as_mut().poll(&mut cx), Poll::Ready(AGAIN + 3));
    }

    #[tokio::test]
    async fn a_task_whose_budget_is_spent_yields_instead_of_being_polled_again() {
        // Spends the turn's budget, then wakes itself: it is polled again only in a
        // new turn, with a new budget.
        let polls = Arc::new(AtomicUsize::new(0));
        let without_budget = Arc::new(AtomicUsize::new(0));
        let (counted_polls, counted_without) = (polls.clone(), without_budget.clone());
        let task = InPlace::new(std::future::poll_fn(move |cx| {
            if !tokio::task::coop::has_budget_remaining() {
                counted_without.fetch_add(1, Ordering::SeqCst);
            }
            if counted_polls.fetch_add(1, Ordering::SeqCst) == 3 {
                return Poll::Ready(());
            }
            while tokio::task::coop::has_budget_remaining() {
                let spend = std::pin::pin!(tokio::task::coop::consume_budget());
                let _ = spend.poll(cx);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }));
        tokio::spawn(task).await.unwrap();
        assert_eq!(polls.load(Ordering::SeqCst), 4);
        assert_eq!(without_budget.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_wake_from_outside_reaches_the_task_once_it_waits() {
        let (woken, waker) = Counted::waker();
        let mut cx = Context::from_waker(&waker);
        let (tx, mut rx) = tokio::sync::oneshot::channel::<u8>();
        let mut task = Box::pin(InPlace::new(async move { (&mut rx).await.unwrap() }));
        assert!(task.as_mut().poll(&mut cx).is_pending());
        assert_eq!(woken.wakes(), 0);
        tx.send(7).unwrap();
        assert_eq!(woken.wakes(), 1);
        assert_eq!(task.as_mut().poll(&mut cx), Poll::Ready(7));
    }

    #[test]
    fn a_wake_from_another_thread_during_a_poll_is_never_lost() {
        // The other thread wakes the task as the poll ends: either the poll sees the wake
        // and polls again, or the wake reaches the task. Each round must end ready.
        for _ in 0..2_000 {
            let (woken, waker) = Counted::waker();
            let mut cx = Context::from_waker(&waker);
            let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let seen = flag.clone();
            let (registered, wait) = std::sync::mpsc::channel();
            let waker_slot = Arc::new(std::sync::Mutex::new(None::<Waker>));
            let slot = waker_slot.clone();
            let mut task = Box::pin(InPlace::new(std::future::poll_fn(move |cx| {
                if seen.load(Ordering::SeqCst) {
                    return Poll::Ready(());
                }
                let first = slot.lock().unwrap().replace(cx.waker().clone()).is_none();
                if first {
                    let _ = registered.send(());
                }
                Poll::Pending
            })));
            let waking = std::thread::spawn(move || {
                wait.recv().unwrap();
                flag.store(true, Ordering::SeqCst);
                let waker = waker_slot.lock().unwrap().clone().unwrap();
                waker.wake();
            });
            let mut turns = 0;
            while task.as_mut().poll(&mut cx).is_pending() {
                // Pending: a wake must reach the task before it is polled again.
                let lost = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while woken.wakes() == turns {
                    assert!(std::time::Instant::now() < lost, "a wake was lost");
                    std::thread::yield_now();
                }
                turns += 1;
            }
            waking.join().unwrap();
        }
    }
}
