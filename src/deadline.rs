//! A deadline that moves later with nearly every use and rarely passes: a client
//! connection's keep-alive timeout, a backend connection's wait for an answer. Setting a
//! tokio timer takes its wheel's lock and moves the timer between the wheel's lists, and
//! dropping one takes the lock again: a timer of its own for every request was 1.5% of
//! tollgate's CPU samples, and one for every wait on a stream's next piece 4% of a
//! stream's instructions (bench/README.md). A `Deadline` keeps one timer for as long
//! as its holder lives and moves it only when the deadline comes sooner than the timer, or
//! when the timer fires before the deadline: about once a timeout on a busy connection.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::time::{Instant, Sleep};

pub struct Deadline {
    at: Instant,
    /// Due at `at` or before it.
    timer: Pin<Box<Sleep>>,
}

impl Deadline {
    pub fn new(at: Instant) -> Deadline {
        Deadline {
            at,
            timer: Box::pin(tokio::time::sleep_until(at)),
        }
    }

    /// Moves the deadline; the timer follows it when next polled, and only if it must.
    pub fn set(&mut self, at: Instant) {
        self.at = at;
    }

    /// Whether the deadline has passed; if not, the task of `cx` is woken by then.
    pub fn passed(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.deadline() > self.at {
                self.timer.as_mut().reset(self.at);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            // It fired at the deadline, or at an earlier one that has moved since.
            if self.timer.deadline() >= self.at {
                return true;
            }
            self.timer.as_mut().reset(self.at);
        }
    }

    /// `work`, unless the deadline passes before it is done (`None`).
    pub async fn within<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| match work.as_mut().poll(cx) {
            Poll::Ready(done) => Poll::Ready(Some(done)),
            Poll::Pending if self.passed(cx) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await
    }

    /// Lets go of the waker the timer holds, without moving the timer: a holder that
    /// outlives the task that last waited on it (a backend connection back in its pool)
    /// would otherwise keep that task's memory until the timer fires.
    pub fn forget_waiter(&mut self) {
        // Ready or not, it stays where it is: the next `passed` decides.
        let _ = self
            .timer
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::server::Counted;

    fn poll_passed(deadline: &mut Deadline, waker: &Waker) -> bool {
        deadline.passed(&mut Context::from_waker(waker))
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_passes_when_it_comes_and_not_before() {
        let start = Instant::now();
        let mut deadline = Deadline::new(start + Duration::from_secs(10));
        let (woken, waker) = Counted::waker();
        assert!(!poll_passed(&mut deadline, &waker));
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!poll_passed(&mut deadline, &waker));
        assert_eq!(woken.wakes(), 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(woken.wakes(), 1);
        assert!(poll_passed(&mut deadline, &waker));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_later_passes_at_its_new_time_only() {
        let start = Instant::now();
        let mut deadline = Deadline::new(start + Duration::from_secs(10));
        let (woken, waker) = Counted::waker();
        assert!(!poll_passed(&mut deadline, &waker));
        deadline.set(start + Duration::from_secs(25));
        // The timer still fires at 10 s: the holder is woken, and the deadline has not
        // passed; the timer moves to 25 s.
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(woken.wakes() >= 1, "woken at the old time");
        assert!(!poll_passed(&mut deadline, &waker));
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(!poll_passed(&mut deadline, &waker));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(poll_passed(&mut deadline, &waker));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_sooner_passes_at_its_new_time() {
        let start = Instant::now();
        let mut deadline = Deadline::new(start + Duration::from_secs(60));
        let (woken, waker) = Counted::waker();
        assert!(!poll_passed(&mut deadline, &waker));
        deadline.set(start + Duration::from_secs(5));
        assert!(!poll_passed(&mut deadline, &waker));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(woken.wakes() >= 1, "woken at the new time");
        assert!(poll_passed(&mut deadline, &waker));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_let_go_is_not_woken_and_the_deadline_still_holds() {
        let start = Instant::now();
        let mut deadline = Deadline::new(start + Duration::from_secs(10));
        let (woken, waker) = Counted::waker();
        assert!(!poll_passed(&mut deadline, &waker));
        assert_eq!(Arc::strong_count(&woken), 3, "the timer holds the waker");
        deadline.forget_waiter();
        assert_eq!(
            Arc::strong_count(&woken),
            2,
            "the timer let go of the waker"
        );
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(woken.wakes(), 0);
        // A task that waits again is told at once.
        assert!(poll_fn(|cx| Poll::Ready(deadline.passed(cx))).await);
    }
}
