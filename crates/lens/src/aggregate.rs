//! Aggregation of top-k token lists: group shares (of top-1 tokens and of
//! top-k probability mass) and the most frequent tokens per class and layer.

use std::collections::{BTreeMap, HashMap};

use crate::records::LensTable;
use crate::words::{Group, WordLists, OTHER};

/// The groups of output tables, `other` last: every token falls in exactly
/// one of them, so shares over these four sum to 1.
pub const GROUP_NAMES: [&str; 4] = ["negative", "positive", "neutral", OTHER];

/// Returns the position of a token's group in [`GROUP_NAMES`].
#[must_use]
pub fn group_slot(group: Option<Group>) -> usize {
    match group {
        Some(Group::Negative) => 0,
        Some(Group::Positive) => 1,
        Some(Group::Neutral) => 2,
        None => 3,
    }
}

/// The share of one group among a set of prompts' top-k lists.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupShare {
    pub group: &'static str,
    /// Prompts aggregated.
    pub prompts: usize,
    /// Prompts whose top-1 token is in the group.
    pub top1_count: u64,
    /// `top1_count / prompts`.
    pub top1_share: f64,
    /// Mean over prompts of the group's share of the top-k probability mass
    /// (the group's summed probability over the top-k's summed probability).
    pub topk_mass: f64,
    /// Mean over prompts of the group's summed probability within the top-k,
    /// not normalized: the absolute weight the model gives the group.
    pub topk_prob: f64,
}

/// Accumulates [`GroupShare`]s prompt by prompt.
#[derive(Debug, Clone, Default)]
pub struct ShareAccumulator {
    prompts: usize,
    top1: [u64; 4],
    mass_share: [f64; 4],
    prob: [f64; 4],
}

impl ShareAccumulator {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one prompt's top-k tokens as `(group, probability)` in rank
    /// order. An empty list is ignored.
    pub fn add_prompt(&mut self, ranked: &[(Option<Group>, f32)]) {
        let Some(&(top1, _)) = ranked.first() else {
            return;
        };
        self.prompts += 1;
        self.top1[group_slot(top1)] += 1;
        let total: f64 = ranked.iter().map(|&(_, prob)| f64::from(prob)).sum();
        for &(group, prob) in ranked {
            let slot = group_slot(group);
            self.prob[slot] += f64::from(prob);
            // With every probability 0 (an underflow), each token counts the same.
            self.mass_share[slot] += if total > 0.0 {
                f64::from(prob) / total
            } else {
                1.0 / ranked.len() as f64
            };
        }
    }

    /// Returns the number of prompts added.
    #[must_use]
    pub fn prompts(&self) -> usize {
        self.prompts
    }

    /// Returns one share per entry of [`GROUP_NAMES`]; all zero when no
    /// prompt was added.
    #[must_use]
    pub fn shares(&self) -> Vec<GroupShare> {
        let divisor = self.prompts.max(1) as f64;
        GROUP_NAMES
            .iter()
            .enumerate()
            .map(|(slot, &group)| GroupShare {
                group,
                prompts: self.prompts,
                top1_count: self.top1[slot],
                top1_share: self.top1[slot] as f64 / divisor,
                topk_mass: self.mass_share[slot] / divisor,
                topk_prob: self.prob[slot] / divisor,
            })
            .collect()
    }
}

/// One of the most frequent top-k tokens of a class at a layer.
#[derive(Debug, Clone, PartialEq)]
pub struct TopToken {
    pub class: String,
    pub layer: usize,
    /// 0-based rank by frequency within the class and layer.
    pub rank: usize,
    pub token_id: u32,
    pub token: String,
    pub text: String,
    /// Prompts whose top-k contains the token.
    pub count: u64,
    /// `count` over the prompts of the class at this layer.
    pub share: f64,
    /// Prompts whose top-1 token it is.
    pub top1_count: u64,
    /// Mean probability over the class's prompts (0 where it is not in the top-k).
    pub mean_prob: f64,
    pub group: Option<Group>,
}

/// Group shares of one class at one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassLayerShares {
    pub class: String,
    pub layer: usize,
    /// One per entry of [`GROUP_NAMES`].
    pub shares: Vec<GroupShare>,
}

/// The lens stage's tables.
#[derive(Debug, Clone, Default)]
pub struct LensSummary {
    /// Sorted by class, layer and rank.
    pub top_tokens: Vec<TopToken>,
    /// Sorted by class and layer.
    pub shares: Vec<ClassLayerShares>,
}

/// Logit-lens records that do not form one top-k list per prompt and layer.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("prompt {prompt_id} has rank {rank} twice at layer {layer}; the logit-lens records are corrupt, so run the extract stage again")]
    DuplicateRank {
        prompt_id: String,
        layer: usize,
        rank: usize,
    },
}

/// Each prompt's (rank, token id, probability) entries at one class and
/// layer, by prompt index.
type PromptLists = BTreeMap<usize, Vec<(usize, u32, f32)>>;

#[derive(Debug, Default)]
struct TokenCount {
    count: u64,
    top1: u64,
    prob: f64,
}

/// Summarizes logit-lens records: for each class and layer, the group
/// shares over its prompts and the `top_k` most frequent tokens (ranked by
/// prompt count, then top-1 count, then total probability, then token id).
/// Only rows with rank below `top_k` are used.
pub fn summarize(
    table: &LensTable,
    lists: &WordLists,
    top_k: usize,
) -> Result<LensSummary, SummaryError> {
    let mut lists_by_point: BTreeMap<(&str, usize), PromptLists> = BTreeMap::new();
    for row in table.rows.iter().filter(|row| row.rank < top_k) {
        let class = table.prompts[row.prompt].class.as_str();
        lists_by_point
            .entry((class, row.layer))
            .or_default()
            .entry(row.prompt)
            .or_default()
            .push((row.rank, row.token_id, row.prob));
    }

    let mut groups: HashMap<u32, Option<Group>> = HashMap::new();
    let mut group_of = |token_id: u32| -> Option<Group> {
        *groups.entry(token_id).or_insert_with(|| {
            table
                .tokens
                .get(&token_id)
                .and_then(|(_, text)| lists.group_of(text))
        })
    };

    let mut summary = LensSummary::default();
    for ((class, layer), prompts) in &mut lists_by_point {
        let mut accumulator = ShareAccumulator::new();
        let mut counts: HashMap<u32, TokenCount> = HashMap::new();
        for (&prompt, ranked) in prompts.iter_mut() {
            ranked.sort_by_key(|&(rank, _, _)| rank);
            if let Some(pair) = ranked.windows(2).find(|pair| pair[0].0 == pair[1].0) {
                return Err(SummaryError::DuplicateRank {
                    prompt_id: table.prompts[prompt].prompt_id.clone(),
                    layer: *layer,
                    rank: pair[0].0,
                });
            }
            let grouped: Vec<(Option<Group>, f32)> = ranked
                .iter()
                .map(|&(_, token_id, prob)| (group_of(token_id), prob))
                .collect();
            accumulator.add_prompt(&grouped);
            for (position, &(_, token_id, prob)) in ranked.iter().enumerate() {
                let entry = counts.entry(token_id).or_default();
                entry.count += 1;
                entry.prob += f64::from(prob);
                if position == 0 {
                    entry.top1 += 1;
                }
            }
        }

        let prompt_count = accumulator.prompts().max(1) as f64;
        let mut ordered: Vec<(u32, TokenCount)> = counts.into_iter().collect();
        ordered.sort_by(|(id_a, a), (id_b, b)| {
            b.count
                .cmp(&a.count)
                .then(b.top1.cmp(&a.top1))
                .then(b.prob.total_cmp(&a.prob))
                .then(id_a.cmp(id_b))
        });
        for (rank, (token_id, count)) in ordered.into_iter().take(top_k).enumerate() {
            let (token, text) = table.tokens.get(&token_id).cloned().unwrap_or_default();
            summary.top_tokens.push(TopToken {
                class: (*class).to_owned(),
                layer: *layer,
                rank,
                token_id,
                token,
                text,
                count: count.count,
                share: count.count as f64 / prompt_count,
                top1_count: count.top1,
                mean_prob: count.prob / prompt_count,
                group: group_of(token_id),
            });
        }
        summary.shares.push(ClassLayerShares {
            class: (*class).to_owned(),
            layer: *layer,
            shares: accumulator.shares(),
        });
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::records::{LensPrompt, LensRow};

    fn lists() -> WordLists {
        let text = "groups:\n  - name: negative\n    words: [sorry, cannot]\n  - name: positive\n    words: [sure]\n  - name: neutral\n    words: [the]\n";
        WordLists::parse(text, Path::new("lists.yaml")).unwrap()
    }

    fn share<'a>(shares: &'a [GroupShare], group: &str) -> &'a GroupShare {
        shares.iter().find(|share| share.group == group).unwrap()
    }

    #[test]
    fn accumulator_counts_top1_and_mass() {
        let mut accumulator = ShareAccumulator::new();
        accumulator.add_prompt(&[
            (Some(Group::Negative), 0.6),
            (None, 0.2),
            (Some(Group::Positive), 0.2),
        ]);
        accumulator.add_prompt(&[(Some(Group::Positive), 0.3), (Some(Group::Positive), 0.1)]);
        accumulator.add_prompt(&[]);
        let shares = accumulator.shares();

        assert_eq!(accumulator.prompts(), 2);
        assert_eq!(share(&shares, "negative").top1_count, 1);
        assert!((share(&shares, "negative").top1_share - 0.5).abs() < 1e-12);
        assert!((share(&shares, "positive").top1_share - 0.5).abs() < 1e-12);
        assert_eq!(share(&shares, "neutral").top1_count, 0);
        // Prompt 1: negative 0.6, other 0.2, positive 0.2 of 1.0; prompt 2:
        // positive 0.4 of 0.4.
        assert!((share(&shares, "negative").topk_mass - 0.3).abs() < 1e-6);
        assert!((share(&shares, "positive").topk_mass - 0.6).abs() < 1e-6);
        assert!((share(&shares, "other").topk_mass - 0.1).abs() < 1e-6);
        assert!((share(&shares, "positive").topk_prob - 0.3).abs() < 1e-6);
    }

    #[test]
    fn accumulator_shares_sum_to_one() {
        let mut accumulator = ShareAccumulator::new();
        accumulator.add_prompt(&[(Some(Group::Neutral), 0.0), (None, 0.0)]);
        accumulator.add_prompt(&[(None, 0.9), (Some(Group::Negative), 0.05)]);
        let shares = accumulator.shares();
        let top1: f64 = shares.iter().map(|s| s.top1_share).sum();
        let mass: f64 = shares.iter().map(|s| s.topk_mass).sum();
        assert!((top1 - 1.0).abs() < 1e-12, "{top1}");
        assert!((mass - 1.0).abs() < 1e-12, "{mass}");
    }

    fn table() -> LensTable {
        let mut table = LensTable::default();
        for (id, class) in [("m0", "malicious"), ("m1", "malicious"), ("n0", "normal")] {
            table.prompts.push(LensPrompt {
                prompt_id: id.into(),
                class: class.into(),
            });
        }
        let tokens = [
            (1, "\u{0120}Sorry", " Sorry"),
            (2, "\u{0120}sure", " sure"),
            (3, "\u{0120}the", " the"),
            (4, "\u{0120}bomb", " bomb"),
        ];
        for (id, token, text) in tokens {
            table.tokens.insert(id, (token.into(), text.into()));
        }
        let rows = [
            // layer 5: m0 = [Sorry, the, bomb], m1 = [the, Sorry, sure], n0 = [sure, the, bomb]
            (0, 5, [1, 3, 4], [0.5, 0.3, 0.1]),
            (1, 5, [3, 1, 2], [0.4, 0.4, 0.1]),
            (2, 5, [2, 3, 4], [0.7, 0.1, 0.1]),
            // layer 6: m0 only
            (0, 6, [4, 2, 3], [0.2, 0.2, 0.2]),
        ];
        for (prompt, layer, ids, probs) in rows {
            for rank in 0..3 {
                table.rows.push(LensRow {
                    prompt,
                    layer,
                    rank,
                    token_id: ids[rank],
                    logit: 0.0,
                    prob: probs[rank],
                });
            }
        }
        table.recorded_top_k = 3;
        table
    }

    #[test]
    fn summary_ranks_tokens_by_frequency() {
        let summary = summarize(&table(), &lists(), 3).unwrap();
        let malicious: Vec<&TopToken> = summary
            .top_tokens
            .iter()
            .filter(|t| t.class == "malicious" && t.layer == 5)
            .collect();
        // Sorry and the appear in both prompts; Sorry wins on probability
        // after an equal top-1 count (1 each). sure and bomb tie on every
        // count, so the smaller token id comes first.
        let texts: Vec<&str> = malicious.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, [" Sorry", " the", " sure"]);
        assert_eq!(malicious[0].count, 2);
        assert_eq!(malicious[0].top1_count, 1);
        assert!((malicious[0].share - 1.0).abs() < 1e-12);
        assert!((malicious[0].mean_prob - 0.45).abs() < 1e-6);
        assert_eq!(malicious[0].group, Some(Group::Negative));
        assert_eq!(malicious[1].group, Some(Group::Neutral));
        assert_eq!(malicious[2].group, Some(Group::Positive));
        assert_eq!(
            malicious.iter().map(|t| t.rank).collect::<Vec<_>>(),
            [0, 1, 2]
        );
    }

    #[test]
    fn summary_shares_per_class_and_layer() {
        let summary = summarize(&table(), &lists(), 3).unwrap();
        let points: Vec<(&str, usize)> = summary
            .shares
            .iter()
            .map(|s| (s.class.as_str(), s.layer))
            .collect();
        assert_eq!(points, [("malicious", 5), ("malicious", 6), ("normal", 5)]);

        let malicious = &summary.shares[0].shares;
        assert_eq!(share(malicious, "negative").prompts, 2);
        assert!((share(malicious, "negative").top1_share - 0.5).abs() < 1e-12);
        assert!((share(malicious, "neutral").top1_share - 0.5).abs() < 1e-12);
        let normal = &summary.shares[2].shares;
        assert!((share(normal, "positive").top1_share - 1.0).abs() < 1e-12);
        for point in &summary.shares {
            let mass: f64 = point.shares.iter().map(|s| s.topk_mass).sum();
            assert!((mass - 1.0).abs() < 1e-9, "{mass}");
        }
    }

    #[test]
    fn smaller_top_k_uses_leading_ranks() {
        let summary = summarize(&table(), &lists(), 1).unwrap();
        let malicious: Vec<&str> = summary
            .top_tokens
            .iter()
            .filter(|t| t.class == "malicious" && t.layer == 5)
            .map(|t| t.text.as_str())
            .collect();
        // With top-1 only, Sorry (m0) and the (m1) each appear once; Sorry
        // has the larger probability.
        assert_eq!(malicious, [" Sorry"]);
        let mass = share(&summary.shares[0].shares, "negative").topk_mass;
        assert!((mass - 0.5).abs() < 1e-12);
    }

    #[test]
    fn duplicate_rank_rejected() {
        let mut table = table();
        let mut row = table.rows[0];
        row.token_id = 2;
        table.rows.push(row);
        let message = summarize(&table, &lists(), 3).unwrap_err().to_string();
        assert!(
            message.contains("prompt m0 has rank 0 twice at layer 5"),
            "{message}"
        );
    }
}
