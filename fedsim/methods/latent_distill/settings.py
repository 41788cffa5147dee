"""The ``[latent_distill]`` settings of federated distillation with a latent representation layer.

Read only when ``strategy.name = "latent-distill"``; checked whatever the strategy, so that
typos show. Each round a sampled client (1) digests: distils toward the current targets on
the transfer set with ``lambda_ce * CE + lambda_kd * T^2 * KL + lambda_rep * MSE(rep / tau)``,
(2) revisits: trains on its private data, (3) computes logits and representations on the
transfer set and sends them. Targets are the consensus (mean over the round's clients, FedMD)
or, with ``teacher = "server"``, a server model trained on the labelled transfer set.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.datasets.settings import DATASET_NAMES
from fedsim.settings import Section, problems, setting

TEACHERS = ("consensus", "server")


@dataclass
class LatentDistillSettings(Section):
    """Federated distillation with a latent representation layer (strategy ``latent-distill``)."""

    transfer_size: int = setting(1024, "samples in the shared transfer set")
    transfer_classes: list[int] = setting(help="hold the transfer set out of these classes only (`[]` = all)",
                                          factory=list)
    transfer_dataset: str = setting("", "`\"\"` = hold the transfer set out of the training set; else another "
                                    "dataset's training images (`synthetic`, `cifar10`, `cifar100`, `npz`; "
                                    "unlabelled for distillation)")
    transfer_path: str = setting("", "the `.npz` file when `transfer_dataset = \"npz\"`")
    teacher: str = setting("consensus", "the targets: `consensus` (the mean of the round's clients) or `server` "
                           "(a server model trained on the labelled transfer set)")
    teacher_epochs: int = setting(20, "`teacher = \"server\"`: the server teacher's epochs")
    lambda_ce: float = setting(0.0, "weight of cross-entropy on the transfer set's labels while digesting")
    lambda_kd: float = setting(1.0, "weight of the distillation loss T^2 KL on the logits")
    lambda_rep: float = setting(1.0, "weight of the MSE between representations (needs "
                                "`model.representation_dim > 0`)")
    temperature: float = setting(4.0, "distillation temperature T")
    tau: float = setting(1.0, "representations are compared as rep / tau")
    digest_epochs: int = setting(1, "epochs of the digest step on the transfer set")
    digest_batch_size: int = setting(64, "batch size of the digest step")
    digest_lr: float = setting(0.0, "learning rate of the digest step (0 = `train.lr`)")
    tpriv_size: int = setting(1000, "per-client test subset with the client's class mix (T_priv)")

    def check(self, prefix: str = "latent_distill") -> list[str]:
        e = problems(prefix, [
            (self.transfer_size >= 1, "transfer_size", self.transfer_size, "must be >= 1"),
            (self.teacher in TEACHERS, "teacher", self.teacher, f"allowed: {', '.join(TEACHERS)}"),
            (self.teacher_epochs >= 1, "teacher_epochs", self.teacher_epochs, "must be >= 1"),
            *[(getattr(self, k) >= 0, k, getattr(self, k), "must be >= 0")
              for k in ("lambda_ce", "lambda_kd", "lambda_rep")],
            (self.temperature > 0, "temperature", self.temperature, "must be > 0"),
            (self.tau > 0, "tau", self.tau, "must be > 0"),
            (self.digest_epochs >= 0, "digest_epochs", self.digest_epochs, "must be >= 0"),
            (self.digest_batch_size >= 1, "digest_batch_size", self.digest_batch_size, "must be >= 1"),
            (self.digest_lr >= 0, "digest_lr", self.digest_lr, "must be >= 0 (0 = train.lr)"),
            (self.tpriv_size >= 1, "tpriv_size", self.tpriv_size, "must be >= 1"),
        ])
        if self.transfer_dataset:
            e += problems(prefix, [
                (self.transfer_dataset in DATASET_NAMES, "transfer_dataset", self.transfer_dataset,
                 f"allowed: '' (hold out from the training set), {', '.join(DATASET_NAMES)}"),
                (self.transfer_dataset != "npz" or bool(self.transfer_path), "transfer_path", self.transfer_path,
                 "transfer_dataset 'npz' needs the .npz file"),
                (self.teacher == "consensus", "teacher", self.teacher,
                 "a server teacher trains on labels; another dataset's labels are not the clients' classes: "
                 "use teacher = 'consensus' or hold the transfer set out of the training set"),
                (self.lambda_ce == 0, "lambda_ce", self.lambda_ce,
                 "another dataset's labels are not the clients' classes: set lambda_ce = 0"),
                (not self.transfer_classes, "transfer_classes", self.transfer_classes,
                 "class subsets apply to a hold-out of the training set only"),
            ])
        return e
