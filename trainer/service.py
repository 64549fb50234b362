"""LiveDPO's service: the one object the web UI and the CLI talk to.

It owns the store, the policy (behind its lock), the pair pool and the trainer thread.
The model loads in a background thread (the default model converts on first start),
so the web page can show progress instead of a dead port; calls that need the model
before it is ready raise ``NotReady`` with the loading progress.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

from storage.common import MAX_PROMPT_CHARS
from storage.dirlock import lock_data_dir, unlock_data_dir
from trainer import config as C
from trainer.model import adapters
from trainer.model.generate import Sampler
from trainer.model.policy import BASE, Policy
from trainer.pool import PairPool, PlannedPair
from trainer.progress import Progress, ProgressState, Tee, TqdmProgress
from trainer.training.health import AnswerCache
from trainer.training.rounds import READING_THROUGH, RoundOutcome, reference_version, run_round
from trainer.training.trainloop import TRAINED_THROUGH, TrainerThread

log = logging.getLogger(__name__)
SETTINGS_KEY = "settings"
class NotReady(RuntimeError):
    """The model is still loading (or failed to load); the message says which."""


class Service:
    def __init__(self, store, data_dir: Path, model_cfg: C.ModelConfig,
                 sampling: C.SamplingConfig, pool_cfg: C.PoolConfig, train_cfg: C.TrainConfig,
                 *, max_prompt_chars: int = MAX_PROMPT_CHARS, terminal_progress: bool = True) -> None:
        self.store = store
        self.data_dir = Path(data_dir)
        self.adapters_dir = self.data_dir / "adapters"
        self.model_cfg, self.max_prompt_chars = model_cfg, max_prompt_chars
        self.sampling, self.pool_cfg, self.train_cfg = sampling, pool_cfg, train_cfg
        self.policy: Policy | None = None
        self.sampler: Sampler | None = None
        self.pool: PairPool | None = None
        self.health_cache = AnswerCache()  # answers of base and saved versions, for checks
        self._apply_saved_settings()  # an admin's changes in the UI survive a restart
        self.trainer = TrainerThread(self.store, lambda: self.train_cfg, self._run_round,
                                     terminal_progress=terminal_progress)
        self.loading = ProgressState()
        self.load_error: str | None = None
        self._terminal = terminal_progress
        self._ready = threading.Event()
        self._settings_lock = threading.Lock()
        self._dir_lock = None  # the data dir's OS lock, held from start() to stop()

    # --- start-up --------------------------------------------------------------------
    def start(self, background: bool = True, pool: bool = True, trainer: bool = True) -> None:
        """Own the data dir, recover from a crash, then load the model and start threads.

        Raises DataDirBusy if another LiveDPO process serves or trains on this data dir.
        """
        self._dir_lock = self._dir_lock or lock_data_dir(self.data_dir)
        adapters.clean_temp_dirs(self.adapters_dir)
        known = {a["version"] for a in self.store.list_adapters()}
        for path in adapters.set_aside_orphans(self.adapters_dir, known):
            log.warning("a crash left an adapter dir saved but not recorded; set aside as %s",
                        path)
        failed = self.store.fail_interrupted_rounds()
        if failed:
            log.warning("%d round(s) were interrupted by a stop; marked failed", failed)
        # Pairs handed out but not voted before the stop would never be handed out again.
        released = self.store.release_stale_assignments(max_age_s=0)
        if released:
            log.info("%d pair(s) handed out before the stop are queued again", released)
        if background:
            threading.Thread(target=self._load, args=(pool, trainer), name="model-loader",
                             daemon=True).start()
        else:
            self._load(pool, trainer, reraise=True)

    def _load(self, pool: bool, trainer: bool, reraise: bool = False) -> None:
        bar = TqdmProgress("step") if self._terminal else None
        sink = Tee(self.loading, bar) if bar else self.loading
        try:
            self.loading.update(0, 1, "Loading model")
            self.policy = Policy.load(self.model_cfg, progress=sink)
            self.sampler = Sampler(self.policy, self.sampling)
            self._restore_serving()
            self.pool = PairPool(self.policy, self.store, self.sampler, self.pool_cfg,
                                 reference=lambda v: reference_version(self.train_cfg, v),
                                 beta=self.train_cfg.beta, max_length=self.train_cfg.max_length,
                                 seed=self.train_cfg.seed)
            self.loading.update(1, 1, "Model ready")
            self._ready.set()
            if pool:
                self.pool.start()
            if trainer:
                self.trainer.start()
        except Exception as e:  # noqa: BLE001 - shown on the page and in status
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("model load failed: %s", self.load_error)
            if reraise:
                raise
        finally:
            if bar:
                bar.close()

    def _restore_serving(self) -> None:
        """Serve the stored serving version if its directory is complete, else base."""
        version = self.store.serving_adapter()
        if version == BASE:
            return
        row = self.store.get_adapter(version)
        if row and adapters.is_complete(Path(row["path"])):
            self.policy.swap(version, row["path"])
        else:
            log.error("serving adapter %s is missing or incomplete; serving base", version)
            self.store.set_serving_adapter(BASE)

    def _run_round(self, trigger: str, progress: Progress) -> RoundOutcome:
        """One DPO round on the stored votes with the current settings (the trainer
        thread's only way into the model)."""
        return run_round(self.policy, self.store, self.train_cfg, fmt=self.sampler.format,
                         frame=self.sampler.scored, adapters_dir=self.adapters_dir,
                         trigger=trigger, progress=progress, on_accept=self.on_new_version,
                         sampler=self.sampler, health_cache=self.health_cache)

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def require_ready(self) -> None:
        if self.load_error:
            raise NotReady(f"The model failed to load: {self.load_error}")
        if not self._ready.is_set():
            snap = self.loading.snapshot()
            raise NotReady(f"The model is loading: {snap['desc']} "
                           f"({snap['fraction']:.0%}, {snap['elapsed_s']} s)")

    def stop(self) -> None:
        if self.sampler:  # a decode in progress ends now, not after its batch
            self.sampler.stopping.set()
        if self.pool:
            self.pool.stop()
        self.trainer.stop()
        unlock_data_dir(self._dir_lock)
        self._dir_lock = None

    def export_merged(self, version: str, out_dir: Path, card: str, progress=None) -> Path:
        """``version`` merged into the base weights at ``out_dir`` (trainer/model/merge.py):
        a second copy of the base, loaded for the export only."""
        from trainer.model.merge import merge_version

        row = self.store.get_adapter(version)
        if row is None:
            raise ValueError(f"no adapter version {version!r}")
        return merge_version(self.model_cfg, Path(row["path"]), out_dir, card, progress)

    # --- annotating ---------------------------------------------------------------------
    def next_pair(self, annotator: str) -> dict | None:
        """The next A/B pair for this annotator (None when none is ready right now)."""
        return self._take(annotator, "pair")

    def next_rank(self, annotator: str) -> dict | None:
        """The next rank set (its ``answers``) for this annotator, or None."""
        return self._take(annotator, "rank")

    def next_item(self, annotator: str) -> dict | None:
        """The next pair or rank set, as the admin's ``vote_mode`` says."""
        return self._take(annotator, self.pool_cfg.vote_mode)

    def _take(self, annotator: str, kind: str) -> dict | None:
        cfg = self.pool_cfg
        team = self.store.active_annotators(cfg.release_after_s) >= 2
        item = self.store.take_pair(annotator, overlap=cfg.overlap, kind=kind,
                                    overlap_fraction=cfg.overlap_fraction if team else 0.0)
        if self.pool:
            self.pool.wake()
        return item

    def undo(self, annotator: str, showing: int | None = None) -> dict:
        """Undo ``annotator``'s last vote while no round has read it; returns the pair (or
        rank set) to show again (``Store.undo_last_vote``)."""
        read = max(int(self.store.get_state(TRAINED_THROUGH, 0) or 0),
                   int(self.store.get_state(READING_THROUGH, 0) or 0))
        pair_id = self.store.undo_last_vote(annotator, read, showing)
        if self.pool:
            self.pool.wake()
        return self.store.get_pair(pair_id)

    def vote(self, annotator: str, pair_id: int, choice: str, better_answer: str | None = None,
             decide_ms: int | None = None) -> dict:
        """Commit a vote, then reveal the versions and the implicit-reward prediction."""
        self.store.record_vote(pair_id, annotator, choice, better_answer or None, decide_ms)
        pair = self.store.get_pair(pair_id)
        gen = pair.get("gen_config") or {}
        ra, rb = gen.get("reward_a"), gen.get("reward_b")
        predicted = None if ra is None or rb is None or ra == rb else ("a" if ra > rb else "b")
        return {"pair_id": pair_id, "choice": choice, "version_a": pair["version_a"],
                "version_b": pair["version_b"], "arena": bool(pair["arena"]),
                "reward_a": ra, "reward_b": rb, "predicted": predicted,
                "prediction_correct": None if predicted is None or choice not in ("a", "b")
                else predicted == choice}

    def vote_rank(self, annotator: str, pair_id: int, choice: str = "rank",
                  best: int | None = None, worst: int | None = None,
                  decide_ms: int | None = None) -> dict:
        """Commit a rank vote (0-based best / worst), then reveal each answer's version
        and the implicit reward's own pick of best and worst."""
        self.store.record_rank_vote(pair_id, annotator, choice, best, worst, decide_ms)
        answers = self.store.get_pair(pair_id)["answers"]
        rewards = [a.get("reward") for a in answers]
        known = None not in rewards and len(set(rewards)) > 1
        pred_best = max(range(len(rewards)), key=rewards.__getitem__) if known else None
        pred_worst = min(range(len(rewards)), key=rewards.__getitem__) if known else None
        return {"pair_id": pair_id, "choice": choice, "best": best, "worst": worst,
                "versions": [a["version"] for a in answers], "rewards": rewards,
                "arena": len({a["version"] for a in answers}) > 1,
                "predicted_best": pred_best, "predicted_worst": pred_worst,
                "prediction_correct": None if pred_best is None or choice != "rank"
                else (best is None or pred_best == best)
                and (worst is None or pred_worst == worst)}

    def ask(self, annotator: str, prompt: str) -> dict:
        """Generate a pair (or a rank set, in rank mode) for the annotator's own prompt at
        once and hand it to them."""
        self.require_ready()
        prompt_id = self.store.add_prompt(prompt, source="user",
                                          max_chars=self.max_prompt_chars)
        ids = self.pool.produce_items([PlannedPair(prompt_id, prompt.strip(), False)], None)
        if not ids:
            raise ValueError("The model gave the same (or empty) answers to that prompt "
                             "three times; try rephrasing it.")
        self.store.assign_pair(ids[0], annotator)
        return self.store.get_pair(ids[0])

    # --- training ------------------------------------------------------------------------
    def train_now(self) -> None:
        self.require_ready()
        self.trainer.ask()

    def on_new_version(self, version: str) -> None:
        """Called by a round after a hot-swap: refresh the pool, free old adapters."""
        if self.pool:
            self.pool.new_version()
        keep = {version}
        opp = self.pool.opponent() if self.pool else None
        if opp:
            keep.add(opp)
        self.policy.keep_only(keep)

    def rollback(self, version: str) -> str:
        """Serve an earlier version (or 'base'); later rounds branch from it."""
        self.require_ready()
        path = None
        if version != BASE:
            row = self.store.get_adapter(version)
            if not row or row["status"] != "ready" or not adapters.is_complete(Path(row["path"])):
                known = ", ".join(a["version"] for a in self.store.list_adapters()
                                  if a["status"] == "ready") or "none"
                raise ValueError(f"Cannot roll back to {version!r}: not a complete accepted "
                                 f"version. Choose 'base' or one of: {known}.")
            path = row["path"]
        with self.policy.switching:  # a round cannot swap in between (rounds.py)
            self.policy.swap(version, path)
            self.store.set_serving_adapter(version)
        self.on_new_version(version)
        return version

    # --- settings ----------------------------------------------------------------------------
    def settings(self) -> dict:
        return {area: {k: getattr(self._area(area), k) for k in keys}
                for area, keys in C.EDITABLE.items()}

    def update_settings(self, changes: dict[str, dict]) -> dict:
        """Validate and apply admin changes ({area: {field: value}}); persisted in the DB.

        Raises ValueError listing every bad value; nothing changes then.
        """
        with self._settings_lock:
            new, errors = {}, []
            for area, fields in changes.items():
                bad = [k for k in fields if k not in C.EDITABLE.get(area, ())]
                if bad:
                    errors.append(f"{area}: cannot change {', '.join(bad)} at run time")
                    continue
                try:
                    new[area] = C.replace(self._area(area), **fields)
                except ValueError as e:
                    errors.append(str(e).replace("Invalid settings:\n  - ", ""))
            if errors:
                raise ValueError("Invalid settings:\n  - " + "\n  - ".join(errors))
            self._set_areas(new)
            self.store.set_state(SETTINGS_KEY, self.settings())
            return self.settings()

    def _area(self, area: str):
        return {"train": self.train_cfg, "pool": self.pool_cfg, "sampling": self.sampling}[area]

    def _set_areas(self, new: dict) -> None:
        self.train_cfg = new.get("train", self.train_cfg)
        self.pool_cfg = new.get("pool", self.pool_cfg)
        self.sampling = new.get("sampling", self.sampling)
        if self.sampler:
            self.sampler.cfg = self.sampling
        if self.pool:
            self.pool.cfg, self.pool.beta = self.pool_cfg, self.train_cfg.beta

    def _apply_saved_settings(self) -> None:
        saved = self.store.get_state(SETTINGS_KEY) or {}
        try:
            self._set_areas({a: C.replace(self._area(a), **{k: v for k, v in f.items()
                                                            if k in C.EDITABLE[a]})
                             for a, f in saved.items() if a in C.EDITABLE})
        except ValueError as e:
            log.error("ignoring saved settings: %s", e)

    # --- status -------------------------------------------------------------------------
    def status(self) -> dict:
        counts = self.store.counts()
        out = {**counts, "serving_adapter": self.store.serving_adapter(),
               "adapters": [a["version"] for a in self.store.list_adapters()],
               "model": self.model_cfg.model, "ready": self._ready.is_set(),
               "loading": self.loading.snapshot(), "load_error": self.load_error,
               "trainer": self.trainer.status(), "settings": self.settings()}
        if self.policy:
            out["device"] = dataclasses.asdict(self.policy.placement) | {
                "dtype": str(self.policy.placement.dtype)}
        if self.pool:
            out["pool"] = self.pool.status()
        return out
