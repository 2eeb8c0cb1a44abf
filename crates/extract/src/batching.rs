//! Length-sorted batches that respect a prompt count and a padded-token budget.

/// Limits of one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Prompts per batch.
    pub prompts: Option<usize>,
    /// Padded tokens per batch: prompts times the longest prompt's length.
    pub tokens: Option<usize>,
}

/// Splits prompts (given by their token counts) into batches: indices sorted
/// by length, longest first, then cut wherever the next prompt would break a
/// limit. A prompt longer than the token budget gets a batch of its own.
/// The result is deterministic for the same lengths and limits.
#[must_use]
pub fn plan_batches(lengths: &[usize], limits: BatchLimits) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));

    let max_prompts = limits.prompts.unwrap_or(usize::MAX).max(1);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for index in order {
        let length = lengths[index];
        let padded_after = (current.len() + 1) * longest.max(length);
        let over_tokens = limits.tokens.is_some_and(|budget| padded_after > budget);
        if !current.is_empty() && (current.len() >= max_prompts || over_tokens) {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(length);
        current.push(index);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_limit_and_length_order() {
        let batches = plan_batches(
            &[3, 9, 5, 7, 1],
            BatchLimits {
                prompts: Some(2),
                tokens: None,
            },
        );
        assert_eq!(batches, vec![vec![1, 3], vec![2, 0], vec![4]]);
    }

    #[test]
    fn token_budget_counts_padding() {
        // Sorted lengths 10, 6, 5, 2: 10 + 10 > 16 so 10 is alone; 6 * 2 = 12 fits; 6 * 3 = 18 does not.
        let batches = plan_batches(
            &[5, 10, 2, 6],
            BatchLimits {
                prompts: None,
                tokens: Some(16),
            },
        );
        assert_eq!(batches, vec![vec![1], vec![3, 0], vec![2]]);
    }

    #[test]
    fn oversized_prompt_gets_its_own_batch() {
        let batches = plan_batches(
            &[40, 3],
            BatchLimits {
                prompts: Some(8),
                tokens: Some(16),
            },
        );
        assert_eq!(batches, vec![vec![0], vec![1]]);
    }

    #[test]
    fn every_prompt_once() {
        let lengths: Vec<usize> = (0..100).map(|i| (i * 37) % 23 + 1).collect();
        let batches = plan_batches(
            &lengths,
            BatchLimits {
                prompts: Some(7),
                tokens: Some(60),
            },
        );
        let mut seen: Vec<usize> = batches.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        for batch in &batches {
            assert!(batch.len() <= 7);
            let longest = batch.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(batch.len() == 1 || batch.len() * longest <= 60);
        }
    }
}
