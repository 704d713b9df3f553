"""What the notebooks orchestrate and `make course` runs, apart from the algorithms below it:

    yardstick      the one evaluation every notebook uses: eval prompts, temperature, seed, the
                   headline gain and win rate
    tradeoff_runs  notebook 05's cached PPO runs (kl_coef sweep, best-of-n pool, over-optimization)
    proxies        notebook 05's weak proxy and online reward-model refresh
    final_eval     notebooks 06 and 07: saved policies and the scoreboard
    runner         `python -m rlhf_edu.course --preset cpu`: every notebook headless, the summary
    report         the report card of a run (each notebook's headline metrics and plots, the times)
    kernel_watch   notices a kernel that lost a reply, for the runner and for nbval (nbval_watch)

Modules here import from the rest of `rlhf_edu`; nothing below imports from here.
"""
