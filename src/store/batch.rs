//! Group commit for the hot path (after River's `BatchCompleter`): callers hand one item each
//! to a [`Batcher`] and wait for its answer; a single task writes whatever has gathered as one
//! statement, so many requests share one round trip and one commit, while every row is still
//! guarded on its own inside the statement (a fencing token, `ON CONFLICT`).
//!
//! The batches form by themselves: a writer takes everything waiting when it becomes free, so
//! at light load a batch is one item written at once (no added latency), and under load the
//! batch grows while the statements in flight run. The queue is bounded: when it is full,
//! callers wait, which slows the work feeding it instead of buffering without end. When a
//! whole batch fails, each item is tried alone, so one item the database refuses cannot hold
//! up the others.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Writes one batch: one answer per item, in order.
pub type Write<I, O> = Arc<dyn for<'a> Fn(&'a [I]) -> BoxFuture<'a, Result<Vec<O>, StoreError>> + Send + Sync>;

/// A [`Write`] from a closure (the helper pins the closure's signature, which inference cannot
/// find on its own for a future that borrows the batch).
pub fn write<I, O, F>(f: F) -> Write<I, O>
where
    F: for<'a> Fn(&'a [I]) -> BoxFuture<'a, Result<Vec<O>, StoreError>> + Send + Sync + 'static,
{
    Arc::new(f)
}

struct Job<I, O> {
    item: I,
    reply: oneshot::Sender<Result<O, StoreError>>,
}

/// A handle to one group-commit task; cheap to clone.
pub struct Batcher<I, O> {
    jobs: mpsc::Sender<Job<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Batcher { jobs: self.jobs.clone() }
    }
}

impl<I: Send + Sync + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts `writers` tasks that take turns at the queue: each takes up to `max_batch`
    /// waiting items and writes them as one statement, so up to `writers` statements are in
    /// flight at once (a commit waiting for its WAL flush does not hold up the next batch).
    /// `queue` items wait at most. The tasks end when every handle is dropped.
    pub fn spawn(
        name: &'static str,
        writers: usize,
        max_batch: usize,
        queue: usize,
        write: Write<I, O>,
    ) -> Batcher<I, O> {
        let (jobs, rx) = mpsc::channel::<Job<I, O>>(queue.max(1));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let (rx, write) = (rx.clone(), write.clone());
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(max_batch);
                loop {
                    // The queue is held only while taking a batch, never while writing one.
                    if rx.lock().await.recv_many(&mut batch, max_batch.max(1)).await == 0 {
                        return;
                    }
                    let (items, replies): (Vec<I>, Vec<_>) = batch.drain(..).map(|j| (j.item, j.reply)).unzip();
                    let started = std::time::Instant::now();
                    let answers = write_all(&write, &items).await;
                    tracing::trace!(batch = name, items = items.len(), elapsed = ?started.elapsed(), "wrote a batch");
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                }
            });
        }
        Batcher { jobs }
    }

    /// Hands `item` to the next batch and waits for its answer.
    pub async fn submit(&self, item: I) -> Result<O, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { item, reply }).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// One answer per item: the batch's, or, when the batch as a whole fails, each item's own.
async fn write_all<I, O>(write: &Write<I, O>, items: &[I]) -> Vec<Result<O, StoreError>> {
    match write(items).await {
        Ok(answers) if answers.len() == items.len() => answers.into_iter().map(Ok).collect(),
        Ok(answers) => {
            let e = format!("a batch of {} items got {} answers", items.len(), answers.len());
            items.iter().map(|_| Err(StoreError::Batch(e.clone()))).collect()
        }
        Err(e) if items.len() == 1 => vec![Err(e)],
        // The database refused something in the statement: find the item, keep the others.
        Err(e @ StoreError::Db(sqlx::Error::Database(_))) | Err(e @ StoreError::Batch(_)) => {
            tracing::debug!(error = %e, items = items.len(), "a batch failed; writing its items one by one");
            let mut answers = Vec::with_capacity(items.len());
            for item in items.chunks(1) {
                answers.push(match write(item).await {
                    Ok(mut one) if one.len() == 1 => Ok(one.remove(0)),
                    Ok(_) => Err(StoreError::Batch("a batch of 1 item got another number of answers".into())),
                    Err(e) => Err(e),
                });
            }
            answers
        }
        // The database cannot be reached: every item gets that answer, at once.
        Err(e) => {
            let e = e.to_string();
            items.iter().map(|_| Err(StoreError::Batch(e.clone()))).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::Mutex;

    #[tokio::test]
    async fn items_written_together_each_get_their_own_answer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let write: Write<u32, u32> = Arc::new(move |items: &[u32]| {
            seen.lock().unwrap().push(items.len());
            let answers = items.iter().map(|i| i * 10).collect();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok(answers)
            }
            .boxed()
        });
        let batcher = Batcher::spawn("test", 1, 16, 64, write);
        let tasks: Vec<_> = (0..40u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.submit(i).await.unwrap()) })
            })
            .collect();
        for t in tasks {
            let (i, answer) = t.await.unwrap();
            assert_eq!(answer, i * 10);
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        assert!(sizes.len() < 40, "items waiting together share a write: {sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 16), "{sizes:?}");
    }

    #[tokio::test]
    async fn one_refused_item_does_not_fail_the_others() {
        let write: Write<u32, u32> = Arc::new(|items: &[u32]| {
            let answer =
                if items.contains(&7) { Err(StoreError::Batch("7 is refused".into())) } else { Ok(items.to_vec()) };
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                answer
            }
            .boxed()
        });
        let batcher = Batcher::spawn("test", 2, 64, 64, write);
        let tasks: Vec<_> = (0..20u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.submit(i).await) })
            })
            .collect();
        for t in tasks {
            let (i, answer) = t.await.unwrap();
            if i == 7 {
                assert!(answer.is_err());
            } else {
                assert_eq!(answer.unwrap(), i);
            }
        }
    }
}
