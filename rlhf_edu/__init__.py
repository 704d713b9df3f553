"""rlhf_edu: the helper library of the rlhf-edu course.

Each notebook builds a piece by hand, checks it against the function here with the same name,
then uses the library version. Modules, in course order:

    presets      smoke / cpu / gpu budgets of every notebook, one table (budgets: 05-07's dataclasses)
    training     plumbing every stage shares: schedule, clip-and-step, freezing, seeded order
    checkpoints  final and resumable checkpoints
    batches      the batch layout every stage uses
    models       the offline SmolLM2-135M-Instruct, hub models, tiny test models, device and dtype
    data         concepts, SFT demonstrations, schema checks
    rubric       the gold annotator: a transparent scoring rubric
    logprobs     per-token log-probs (the only logits/labels shift), masks, masked statistics
    generation   a KV-cached sampler that draws from the exact policy
    sft          completion-only supervised fine-tuning
    annotator    the simulated annotator: rubric + Bradley-Terry noise
    labels       the append-only label store, replay, feedback on a labeler
    widgets      PreferenceLabeler (core ipywidgets)
    preferences  sampling and labeling pairs, export to {prompt, chosen, rejected}
    hub_formats  HH-RLHF, UltraFeedback and TRL preference rows -> the course schema
    reward       the Bradley-Terry reward model: loss, model, scoring
    reward_training  training, saving and loading the reward model
    ppo          PPO math: KL estimators, KL-penalized rewards, GAE, clipped losses, KL controllers
    ppo_loop     one PPO iteration in numbered steps: rollout (1-4) and update (5-6)
    ppo_trainer  the PPO trainer: state, the loop, metrics, checkpoints and resume
    critic       value heads for PPO
    tradeoffs    best-of-n KL, Gao et al. fits, over-optimization peak, distinct-n
    explorer     FrontierExplorer: a slider over policies on the reward/KL frontier
    dpo          DPO, IPO and label-smoothed DPO
    grpo         GRPO / Dr GRPO / RLOO math: group advantages, the KL term, loss aggregation
    grpo_loop    the GRPO / RLOO loop: one iteration, numbered like notebook 06
    grpo_trainer the GRPO trainer: state, the loop, checkpoints and resume
    ab_eval      ABEvaluator (blind A/B widget), win rates, the win-rate matrix
    eval_rows    a policy's eval rows, computed once and cached
    ai_judge     AI feedback: the question judge and the constitution judge
    metrics      means, standard errors, paired differences
    plots        live training plots through a display handle, sample tables, token heatmaps
    store        artifacts, the course summary, cache keys and weight fingerprints
    course/      what the notebooks orchestrate and `make course` runs: the yardstick, notebook 05's
                 runs and proxies, 06-07's scoreboard, the headless runner and its report card
                 (it imports the modules above; none of them imports it)
"""

__version__ = "0.1.0"

HOUSEKEEPING_BARS = ("Loading weights", "Writing model shards")
"""transformers' progress bars for reading and writing a checkpoint on disk (a second or two here)."""


def _hide_housekeeping(factory, args, kwargs):
    """transformers' tqdm hook: the bars named in HOUSEKEEPING_BARS are created disabled."""
    if kwargs.get("desc") in HOUSEKEEPING_BARS:
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def quiet_progress_bars() -> None:
    """Hide the progress bars of housekeeping, which add a line to a notebook's output for every
    file read or written and say nothing about learning: transformers' "Loading weights" and
    "Writing model shards", and datasets' own bars ("Generating train split" for every JSON Lines
    file; all datasets work in this course is on small local files). Training loops keep their
    bars, and so do model downloads from the hub. Call it once, in a notebook's setup cell.

    Notebook: 02_label_preferences.ipynb
    """
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    if hasattr(hf_logging, "set_tqdm_hook"):  # recent transformers 5.x; older ones keep these bars
        hf_logging.set_tqdm_hook(_hide_housekeeping)
