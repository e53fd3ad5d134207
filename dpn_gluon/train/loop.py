"""The training loop: a Gluon DPN, SGD through an MXNet kvstore, one checkpoint per epoch.

One process trains on a list of contexts (CPU, or GPUs with kvstore ``device``); several
processes (``dist_sync``/``dist_device_sync``) each hold a replica, push their gradients to
MXNet's parameter server, pull the sum and apply the same SGD update (``update_on_kvstore``
off, so the momentum buffers live with the workers and rank 0 can save them). Every
gradient is the sum over the whole global batch divided by ``--batch-size``: the update of
one process on that batch. Weight decay applies to weights and gammas only, as MXNet's
``Module`` (``Optimizer.set_wd_mult``) did for the authors.

Determinism: each epoch re-seeds MXNet and the data order from ``(seed, epoch)``, and the
learning rate is a function of the global step, so a resumed run draws and computes what
an uninterrupted one does.
"""
from __future__ import annotations

import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .. import variants
from ..errors import DPNError
from ..lifeline import report_progress
from ..safeio.atomic import Transaction
from . import recipe
from .checkpoints import Run
from .data import Shard, batches, epoch_seed
from .options import Options, parse_devices


def canonical(net) -> "OrderedDict[str, np.ndarray]":
    """The network's tensors by the authors' names, in the variant table's order."""
    from ..formats.names import gluon_param_name
    params = net.collect_params()
    spec = variants.tensor_spec(net.arch, net.classes, net.classifier_name)
    return OrderedDict((k, params[gluon_param_name(k)].data().asnumpy()) for k in spec)


def initial_tensors(opts: Options, train_classes: int):
    """(arch, classes, classifier, canonical tensors or None) to start from.

    ``--from``: the checkpoint's tensors; with another class count the classifier is drawn
    afresh (N(0, 0.01), zero bias, seeded) under the authors' name ``fc6``. ``--arch``: None
    (Gluon's initializers, seeded).
    """
    classes = variants.check_classes(opts.classes or train_classes,
                                     "--classes" if opts.classes else "the data's class count")
    if opts.arch is not None:
        arch, classes, classifier = variants.resolve(opts.arch, classes)
        return arch, classes, classifier, None
    from ..runtimes import read_model
    arch, ck_classes, classifier, tensors, _ = read_model(opts.start)
    if classes == ck_classes:
        return arch, classes, classifier, OrderedDict(tensors)
    out = OrderedDict((k, v) for k, v in tensors.items() if not k.startswith(classifier + "_"))
    rng = np.random.default_rng([opts.seed, 1])
    out["fc6_weight"] = rng.normal(0, 0.01, (classes, arch.num_features)).astype(np.float32)
    out["fc6_bias"] = np.zeros(classes, np.float32)
    return arch, classes, "fc6", out


def build_net(arch, classes, classifier, tensors, ctx, seed: int, freeze_bn: bool):
    import mxnet as mx

    from ..model import DPN, set_canonical
    net = DPN(arch, classes, classifier)
    if freeze_bn:
        for block in _batchnorms(net):
            block._kwargs["use_global_stats"] = True
    if tensors is None:
        mx.random.seed(seed)
        net.initialize(mx.init.MSRAPrelu(slope=0.0), ctx=ctx)
    else:
        set_canonical(net, tensors, ctx)
    for name, param in net.collect_params().items():
        if not (name.endswith("_weight") or name.endswith("_gamma")):
            param.wd_mult = 0.0
    net.hybridize()
    return net


def _batchnorms(block):
    from mxnet.gluon import nn
    for child in block._children.values():
        if isinstance(child, nn.BatchNorm):
            yield child
        yield from _batchnorms(child)


def momentum_states(trainer) -> Dict[str, np.ndarray]:
    """SGD's momentum buffer of every trained parameter, by the authors' name."""
    from ..formats.names import canonical_from_gluon_param
    states = trainer._updaters[0].states
    return {canonical_from_gluon_param(p.name): states[i].asnumpy()
            for i, p in enumerate(trainer._params) if states.get(i) is not None}


def set_momentum_states(trainer, saved: Dict[str, np.ndarray]) -> None:
    import mxnet as mx

    from ..formats.names import canonical_from_gluon_param
    for updater in trainer._updaters:
        for i, p in enumerate(trainer._params):
            value = saved.get(canonical_from_gluon_param(p.name))
            if value is not None:
                updater.states[i] = mx.nd.array(value)
                updater.states_synced[i] = False


def train_step(net, trainer, loss_fn, data: np.ndarray, label: np.ndarray, ctx,
               global_batch: int):
    """One SGD step on this worker's part of a global batch, split over ``ctx``; returns
    (summed loss, correct top-1) of the part. The gradient is summed over every device and
    worker and divided by ``global_batch``."""
    from mxnet import autograd, gluon
    xs = gluon.utils.split_and_load(data, ctx)
    ys = gluon.utils.split_and_load(label.astype(np.float32), ctx)
    with autograd.record():
        outs = [net(x) for x in xs]
        losses = [loss_fn(o, y) for o, y in zip(outs, ys)]
    autograd.backward(losses)
    trainer.step(global_batch)
    loss = sum(float(part.sum().asscalar()) for part in losses)
    correct = sum(int((o.argmax(axis=1) == y).sum().asscalar()) for o, y in zip(outs, ys))
    return loss, correct


def make_trainer(net, lr: float, momentum: float, wd: float, kvstore):
    """SGD over ``kvstore``, updates on the workers (so rank 0 holds the momentum to save)."""
    from mxnet import gluon
    return gluon.Trainer(net.collect_params(), "sgd",
                         {"learning_rate": lr, "momentum": momentum, "wd": wd},
                         kvstore=kvstore, update_on_kvstore=False)


def share_start(trainer) -> None:
    """Give every worker rank 0's weights before the first forward pass.

    Left to itself, Gluon broadcasts them inside the first ``step()``, after the first
    gradients exist, so a worker can push its gradient while another's pull of the starting
    weights is still in flight. The server answers a pull from the very buffer that the
    merged gradients then overwrite: rarely (once in CI so far, on a loaded machine) a
    worker took the summed gradient of the last key as its starting weight. Here
    the pulls complete before any gradient is computed, so none can overlap a merge."""
    import mxnet as mx
    trainer._init_kvstore()          # Gluon's own lazy steps, run early (no public API)
    trainer._init_params()
    mx.nd.waitall()


def train(opts: Options, argv_line: str = "") -> dict:
    """Train as ``opts`` says; returns the summary record (also the ``--json`` output)."""
    import mxnet as mx
    from mxnet import gluon
    from tqdm import tqdm

    from ..data.datasets import open_dataset
    from . import report

    run = Run(opts.out)
    previous = check_outputs(run, opts)
    dataset = open_dataset(opts.data)
    val = open_dataset(opts.val_data) if opts.val_data is not None else None
    train_classes = len(dataset.classes) if dataset.classes else int(dataset.labels.max()) + 1
    arch, classes, classifier, tensors = initial_tensors(opts, train_classes)
    if dataset.classes is not None and len(dataset.classes) > classes:
        raise DPNError("%s: %d class folders, but --classes is %d"
                       % (dataset.path, len(dataset.classes), classes))
    dataset.check_labels(classes)
    if val is not None:
        val.check_labels(classes)
    ctx = parse_devices(opts.devices)
    kv = mx.kv.create(opts.kvstore) if opts.distributed else opts.kvstore
    rank, workers = (kv.rank, kv.num_workers) if opts.distributed else (0, 1)
    if opts.batch_size % (workers * len(ctx)):
        raise DPNError("--batch-size %d does not split evenly over %d worker(s) x %d device(s)"
                       % (opts.batch_size, workers, len(ctx)))
    loader = batches(dataset, opts.size, opts.batch_size, Shard(rank, workers), opts.seed,
                     opts.augment, opts.threads)
    steps = loader.steps if opts.max_steps is None else min(loader.steps, opts.max_steps)
    first_epoch, history, states = 0, [], None
    if previous is not None:
        first_epoch, history = previous["epoch"], previous["history"]
        run.check_symbol(arch.name, classes, classifier)
        tensors = run.load_epoch(first_epoch, arch.name, classes, classifier)
        # SGD keeps a momentum buffer for each trained tensor (none without momentum)
        trained = [k for k in tensors if not variants.is_aux(k)] if opts.momentum else []
        states = run.load_states(first_epoch, tensors, trained)
    loader.start()
    net = build_net(arch, classes, classifier, tensors, ctx, opts.seed, opts.freeze_bn)
    trainer = make_trainer(net, opts.base_lr, opts.momentum, opts.wd, kv)
    if opts.distributed:
        share_start(trainer)
    if states is not None:
        set_momentum_states(trainer, states)
    report_progress()
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    lead = rank == 0
    record = {"rank": rank, "workers": workers, "devices": [str(c) for c in ctx],
              "kvstore": opts.kvstore, "arch": arch.name, "classes": classes,
              "classifier": classifier,
              "batch_size": opts.batch_size, "base_lr": opts.base_lr, "epochs": first_epoch,
              "loss": None, "train_top1": None, "top1": None, "img_per_s": None,
              "checkpoint": str(run.params(first_epoch)) if first_epoch else None}
    folders = Transaction()
    validator = Validator(val, opts, arch, classes, classifier, ctx) if lead and val else None
    bar = None
    try:
        if lead:
            folders.make_folders(run.prefix.parent)
            run.append_log("%s start%s: %s" % (_now(), " (resume at epoch %d)" % first_epoch
                                               if first_epoch else "", argv_line))
        for epoch in range(first_epoch, opts.epochs):
            mx.random.seed(epoch_seed(opts.seed, epoch))
            seen, loss_sum, correct = 0, 0.0, 0
            # the bar only on a terminal: in a log file its \r frames are noise; the epoch
            # line below goes to both
            bar = tqdm(total=steps * opts.batch_size, unit="img", file=sys.stderr,
                       disable=not (lead and opts.progress and sys.stderr.isatty()),
                       dynamic_ncols=True,
                       desc="epoch %d/%d" % (epoch + 1, opts.epochs))
            start = time.perf_counter()
            for step, (data, label) in enumerate(loader.epoch(epoch, limit=steps)):
                trainer.set_learning_rate(recipe.lr_at(epoch * steps + step, steps, opts.epochs,
                                                       opts.base_lr, opts.lr_schedule,
                                                       opts.warmup_epochs))
                step_loss, step_correct = train_step(net, trainer, loss_fn, data, label, ctx,
                                                     opts.batch_size)
                report_progress()            # the launcher's watchdog (--stall-timeout)
                loss_sum, correct = loss_sum + step_loss, correct + step_correct
                seen += len(label)
                rate = seen * workers / (time.perf_counter() - start)
                bar.update(len(label) * workers)
                bar.set_postfix(loss="%.4f" % (loss_sum / seen),
                                top1="%.1f%%" % (100 * correct / seen), img_s="%.1f" % rate)
            bar.close()
            seconds = time.perf_counter() - start
            entry = {"epoch": epoch + 1, "loss": loss_sum / max(1, seen),
                     "train_top1": 100.0 * correct / max(1, seen),
                     "img_per_s": seen * workers / seconds if seconds else None,
                     "lr": trainer.learning_rate}
            if lead:
                if validator is not None:
                    entry.update(validator(net))
                history.append(entry)
                path = _save(run, epoch + 1, net, trainer, opts, history, arch, classes,
                             classifier)
                run.append_log("%s epoch %d: %s" % (_now(), epoch + 1, " ".join(
                    "%s=%s" % (k, _fmt(v)) for k, v in entry.items() if k != "epoch")))
                report.curves(run.curves, history)
                record["checkpoint"] = str(path)
                report_progress()
                if opts.progress:
                    tqdm.write(epoch_line(entry, opts.epochs), file=sys.stderr)
            record.update(epochs=epoch + 1, loss=entry["loss"], train_top1=entry["train_top1"],
                          img_per_s=entry["img_per_s"], top1=entry.get("top1"))
    except BaseException:
        if bar is not None:
            bar.close()          # ends the bar's line: a message after it starts on its own
        if lead and previous is None and not run.record.exists():
            _remove_unfinished(run, opts.epochs)       # a new run with no complete epoch
            folders.rollback()
        raise
    finally:
        loader.close()
    folders.finish()
    return record


def _remove_unfinished(run: Run, epochs: int) -> None:
    """A new run that failed before its first complete epoch leaves nothing: its files did
    not exist before it (:func:`check_outputs`), so they are its own; else a retry is refused
    (``PREFIX.log exists``) and ``--resume`` has no epoch to continue."""
    for path in run.files(epochs):
        if path.is_file() and not path.is_symlink():
            path.unlink()


def figures(entry: dict) -> str:
    """``loss, train top-1[, val top-1], img/s`` of an epoch or a run, as both lines print
    them (0.0 is a value; only a missing one reads nan)."""
    def number(key):
        return float("nan") if entry.get(key) is None else entry[key]
    val = "" if entry.get("top1") is None else ", val top-1 %.2f %%" % entry["top1"]
    return "loss %.4f, train top-1 %.1f %%%s, %.1f img/s" % (
        number("loss"), number("train_top1"), val, number("img_per_s"))


def epoch_line(entry: dict, epochs: int) -> str:
    """What the lead worker prints after each epoch (on stderr, beside the bar)."""
    return "epoch %d/%d: %s" % (entry["epoch"], epochs, figures(entry))


def _fmt(v) -> str:
    return "%.4g" % v if isinstance(v, float) else str(v)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def check_outputs(run: Run, opts: Options) -> Optional[dict]:
    """The run record to resume from (with ``--resume``), or None for a new run.

    The run's files follow :mod:`dpn_gluon.safeio.outputs`: none is an input or inside an
    input folder (a curves PNG in a class folder would become a training image), none is a
    symbolic link or a folder; a new run replaces nothing."""
    from ..safeio.outputs import Output, Plan
    if Path(opts.out).is_dir():
        raise DPNError("--out %s is a folder; give a PREFIX in it, such as %s"
                       % (opts.out, Path(opts.out) / "dpn"))
    inputs = [Path(p) for p in (opts.data, opts.val_data, opts.start) if p is not None]
    inputs += [p.with_suffix(".idx") for p in inputs if p.suffix == ".rec"]
    Plan([Output(p, role="training output") for p in run.files(opts.epochs)], inputs,
         force=True)
    if not opts.resume:
        found = run.existing()
        if found:
            raise DPNError("%s exists (a previous run at --out %s; use --resume to continue it, "
                           "or another --out)" % (found[0], opts.out))
        return None
    previous = run.read_record()
    if previous is None or not previous.get("epoch"):
        raise DPNError("--resume: no completed epoch at --out %s (no %s)" % (opts.out, run.record))
    mine = opts.recipe_dict()
    for key, value in previous["recipe"].items():
        if mine.get(key) != value:
            raise DPNError("--resume: --%s is %r, but the run at %s used %r"
                           % (key.replace("_", "-"), mine.get(key), opts.out, value))
    if previous["epoch"] >= opts.epochs:
        raise DPNError("--resume: the run at %s already has %d epoch(s); raise --epochs"
                       % (opts.out, previous["epoch"]))
    return previous


def _save(run: Run, epoch: int, net, trainer, opts: Options, history, arch, classes, classifier):
    if not run.symbol.exists():
        run.write_symbol(arch.name, classes, classifier)
    path = run.save(epoch, canonical(net), momentum_states(trainer))
    run.write_record({"epoch": epoch, "params": str(path), "recipe": opts.recipe_dict(),
                      "history": history})
    return path


class Validator:
    """Top-1 / top-5 (%) on ``--val-data`` under the authors' test protocol (dpn-evaluate's).

    One test network for the whole run, given the trained weights before each pass: a new
    hybridized network per epoch left MXNet a new graph and new buffers every epoch."""

    def __init__(self, val, opts: Options, arch, classes, classifier, ctx):
        from ..model import DPN
        self.val, self.opts, self.ctx = val, opts, ctx
        self.net = DPN(arch, classes, classifier, mean_max=opts.val_mean_max)
        self.net.initialize(ctx=ctx[0])
        self.net.hybridize()

    def __call__(self, net) -> dict:
        import mxnet as mx

        from ..evaluate import evaluate
        from ..model import set_canonical
        from ..runtimes import Runtime
        set_canonical(self.net, canonical(net), self.ctx[0])
        test_net, ctx = self.net, self.ctx[0]

        def forward(batch):
            report_progress()
            return test_net(mx.nd.array(batch, ctx=ctx)).asnumpy()

        runtime = Runtime("gluon", test_net.arch.name, test_net.classes,
                          test_net.classifier_name, [str(ctx)], forward)
        res = evaluate(runtime, self.val, self.opts.size, "authors", self.opts.val_mean_max,
                       batch_size=max(1, self.opts.batch_size // len(self.ctx)), workers=0,
                       progress=False)
        return {"top1": 100.0 - res["top1_error"], "top5": 100.0 - res["top5_error"],
                "val_images": res["images"]}
