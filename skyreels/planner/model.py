"""A discrete-event model of the served application (SimPy), in seconds at real-time scale: the job store's
queue and the runner, the stage deployments and their replicas behind Serve's router, their autoscaling, and
the GPU nodes under them. It runs the same layouts as the Serve app at any scale in milliseconds.

What it follows from the app (serve_app, deployments, skyreels.sim):
- the queue: re-runs of cut-off jobs first, then the priority class, then jobs of a model a gang holds (unless
  the oldest job has waited `model_group_delay_s`), oldest first; at most `max_running_jobs` jobs in the stages;
- a job: text encoding (TextEncoder), the I2V image's encoding (Vae), the denoising on a gang (a weight swap
  first when the gang holds another model, a LoRA load when the adapters differ; the step cache skips a share
  of the steps), then the decode and the mux: a call of its own to the Vae, or at the end of the denoise call on the
  gang that denoised; a stage fails with `fail_rate` and the job runs again from the start, `max_attempts` runs at
  most;
- Serve's router: a request goes to a ready replica with fewer than `max_ongoing_requests` (for the Denoiser,
  one holding the job's model first, then the least loaded), and a replica runs one request at a time. When
  every replica is full the requests wait, each retrying with its own backoff: whichever retries first after a
  replica frees takes it, so the order among waiting requests is, in effect, random (the real app's traces showed
  a decode on the gang, when it was a call of its own, waiting behind denoising calls made after it:
  benchmarks/planner_validation.py);
- Serve's autoscaler: every `control_period_s`, the deployment's ongoing requests (queued and running) over
  `target_ongoing_requests`, averaged over `look_back_s`, rounded up and clipped, once it has held for the
  upscale (downscale) delay; a new replica needs room on a node (a node starts in `node_start_s` when none has
  room) and loads its model in `load_s`; a node without replicas goes after `node_idle_s`;
- `Orchestration`: what Ray and Serve add to each stage call beyond the GPU work (hops, transfers, progress),
  measured on the machine the model stands for.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal

import simpy

from skyreels.sim.profile import SimProfile, VideoShape, mesh_of

Task = Literal["t2v", "i2v"]
Priority = Literal["interactive", "batch"]
PRIORITY_RANK = {"interactive": 0, "batch": 1}


@dataclass(frozen=True)
class Arrival:
    at_s: float
    shape: VideoShape
    steps: int = 30
    task: Task = "t2v"
    priority: Priority = "batch"
    lora: str | None = None


@dataclass(frozen=True)
class Orchestration:
    """Seconds each stage call takes beyond its GPU work (real-time scale), and the part of it that holds the
    replica (the rest is on the way there and back)."""

    text_s: float = 0.0
    gang_s: float = 0.0  # the gang's call: dispatch to its ranks, progress, the latents back
    gang_held_s: float = 0.0
    decode_s: float = 0.0  # latents to the decoder, the video to storage, the mux (real CPU work)
    decode_held_s: float = 0.0
    per_job_s: float = 0.0  # the runner's own share: claim, records, between the calls

    def scaled(self, factor: float) -> Orchestration:
        return Orchestration(**{name: value * factor for name, value in self.__dict__.items()})


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float = 1.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    look_back_s: float = 30.0


@dataclass(frozen=True)
class StageSpec:
    """One deployment: its replicas, GPUs per replica (fractions share a gang's node), queue and scaling."""

    replicas: int
    gpus: float
    max_ongoing_requests: int = 1
    autoscaling: Autoscaling | None = None
    load_s: float = 0.0  # a new replica's start and model load
    gpu_type: str = ""  # the node pool it runs on ("" : the gang's)
    # On a gang's GPU (beside rank 0, or a share of a gang GPU): while the gang computes, its kernels and the rank's
    # take turns on the GPU (time slices of separate CUDA contexts): the call takes twice its time, and the gang,
    # which waits for its slowest rank, as long again.
    shares_gang_gpu: bool = False


@dataclass(frozen=True)
class ModelledApp:
    """What the model needs of a Serve config (skyreels.planner.layouts builds it from one)."""

    gang_size: int
    gang: StageSpec
    text: StageSpec
    vae: StageSpec
    decode_on: Literal["vae", "gang"]
    profiles: dict[str, SimProfile]  # by GPU type: the gang's, and the pools' of the text and VAE stages
    gang_gpu_type: str
    max_running_jobs: int
    gpus_per_node: dict[str, int]  # by GPU type
    max_nodes: dict[str, int] | None = None  # None: a fixed fleet, every replica placed at the start
    node_start_s: float = 300.0
    node_idle_s: float = 600.0
    model_group_delay_s: float = 30.0
    max_attempts: int = 3
    fail_rate: float = 0.0
    step_cache_skip: float = 0.0  # the share of steps the step cache skips
    lora_load_s: float = 2.0
    offload_s: float = 0.0  # added to every denoising call: the DiT onloaded (model-level offload)
    orchestration: Orchestration = field(default_factory=Orchestration)
    control_period_s: float = 1.0


@dataclass
class JobRecord:
    arrival: Arrival
    started_s: float | None = None
    completed_s: float | None = None
    runs: int = 0
    failed: bool = False

    @property
    def latency_s(self) -> float:
        return self.completed_s - self.arrival.at_s


@dataclass
class Outcome:
    jobs: list[JobRecord]
    gpu_seconds: float  # GPUs of the nodes alive, over the run (what a cloud bills)
    replica_gpu_seconds: float  # GPUs the replicas held
    end_s: float
    replicas_over_time: dict[str, list[tuple[float, int]]]
    nodes_over_time: list[tuple[float, int]]

    @property
    def completed(self) -> list[JobRecord]:
        return [job for job in self.jobs if job.completed_s is not None and not job.failed]


class StageFailed(Exception):
    """A stage call failed (the profile's fail_rate): the job's run ends, and it runs again if runs remain."""


class Replica:
    def __init__(self, env: simpy.Environment, ready_at: float) -> None:
        self.lock = simpy.Resource(env, capacity=1)
        self.ongoing = 0
        self.ready = False
        self.ready_at = ready_at
        self.model: str | None = None
        self.lora: str | None = None
        self.node: Node | None = None
        self.stopping = False
        self.debt = 0.0  # GPU seconds that co-located replicas took from this gang's call in progress


class Node:
    def __init__(self, gpu_type: str, gpus: int, up_at: float) -> None:
        self.gpu_type, self.gpus, self.used, self.up_at = gpu_type, gpus, 0.0, up_at
        self.idle_since: float | None = None
        self.ready = False


class Cluster:
    """GPU nodes by type; a fixed fleet (max_nodes None) places everything at once."""

    def __init__(self, env: simpy.Environment, app: ModelledApp) -> None:
        self.env, self.app = env, app
        self.nodes: list[Node] = []
        self.gpu_seconds = 0.0
        self._last = 0.0
        self.history: list[tuple[float, int]] = []

    def _account(self) -> None:
        now = self.env.now
        self.gpu_seconds += (now - self._last) * sum(node.gpus for node in self.nodes)
        self._last = now

    def place(self, gpu_type: str, gpus: float) -> Generator[Any, Any, Node]:
        """A node of the type with room for `gpus`, started when none has it."""
        while True:
            for node in self.nodes:
                if node.gpu_type == gpu_type and node.gpus - node.used >= gpus - 1e-9:
                    node.used += gpus
                    node.idle_since = None
                    if not node.ready:
                        yield self.env.timeout(max(0.0, node.up_at - self.env.now))
                    return node
            limit = None if self.app.max_nodes is None else self.app.max_nodes.get(gpu_type, 0)
            if limit is not None and sum(node.gpu_type == gpu_type for node in self.nodes) >= limit:
                yield self.env.timeout(self.app.control_period_s)  # the cluster is full: wait for room
                continue
            self._account()
            start = 0.0 if self.app.max_nodes is None else self.app.node_start_s
            node = Node(gpu_type, self.app.gpus_per_node[gpu_type], self.env.now + start)
            self.nodes.append(node)
            self.history.append((self.env.now, len(self.nodes)))
            self.env.process(self._come_up(node))

    def _come_up(self, node: Node) -> Generator:
        yield self.env.timeout(max(0.0, node.up_at - self.env.now))
        node.ready = True

    def release(self, node: Node, gpus: float) -> None:
        node.used -= gpus
        if node.used <= 1e-9:
            node.idle_since = self.env.now

    def reap(self) -> None:
        """Nodes idle for node_idle_s go (an autoscaled cluster only)."""
        if self.app.max_nodes is None:
            return
        idle = [n for n in self.nodes if n.idle_since is not None and self.env.now - n.idle_since >= self.app.node_idle_s]
        if idle:
            self._account()
            self.nodes = [n for n in self.nodes if n not in idle]
            self.history.append((self.env.now, len(self.nodes)))

    def close(self) -> None:
        self._account()


class Deployment:
    """A deployment's replicas behind Serve's router (waiting requests served in effect at random,
    max_ongoing_requests per replica)."""

    def __init__(self, env: simpy.Environment, name: str, spec: StageSpec, gpu_type: str, cluster: Cluster,
                 rng: random.Random) -> None:
        self.env, self.name, self.spec, self.gpu_type, self.cluster = env, name, spec, gpu_type, cluster
        self.random = rng
        self.replicas: list[Replica] = []
        self.waiting: deque[tuple[str | None, simpy.Event]] = deque()
        self.history: list[tuple[float, int]] = []
        self.replica_gpu_seconds = 0.0
        self._samples: deque[tuple[float, int]] = deque()
        self.host_of: Callable[[Replica], Replica | None] | None = None  # the gang whose GPU it shares
        self._want_since: dict[str, float | None] = {"up": None, "down": None}
        for _ in range(spec.replicas):
            self.add_replica(ready=True)

    @property
    def live(self) -> list[Replica]:
        return [r for r in self.replicas if not r.stopping]

    def add_replica(self, ready: bool = False) -> None:
        replica = Replica(self.env, self.env.now)
        self.replicas.append(replica)
        self.env.process(self._start(replica, ready))

    def _start(self, replica: Replica, ready: bool) -> Generator:
        replica.node = yield from self.cluster.place(self.gpu_type, self.spec.gpus)
        if not ready:
            yield self.env.timeout(self.spec.load_s)
        replica.ready, replica.ready_at = True, self.env.now
        self.history.append((self.env.now, sum(r.ready for r in self.live)))
        self._route()

    def _stop(self, replica: Replica) -> Generator:
        replica.stopping = True
        while replica.ongoing:
            yield self.env.timeout(self.cluster.app.control_period_s)
        self.replicas.remove(replica)
        if replica.ready:
            self.replica_gpu_seconds += (self.env.now - replica.ready_at) * self.spec.gpus
            self.history.append((self.env.now, sum(r.ready for r in self.live)))
        if replica.node is not None:
            self.cluster.release(replica.node, self.spec.gpus)

    def call(self, seconds: Callable[[Replica], float], model: str | None = None,
             held_extra_s: float = 0.0) -> Generator:
        """Waits for a replica, then holds it for `seconds(replica)` (+ held_extra_s); the replica."""
        assigned = self.env.event()
        self.waiting.append((model, assigned))
        self._route()
        replica: Replica = yield assigned
        with replica.lock.request() as turn:
            yield turn
            work = seconds(replica) + held_extra_s
            host = self.host_of(replica) if self.host_of is not None else None
            if host is not None and host.lock.count:  # the gang computes too: they take turns on the GPU
                host.debt += work  # the gang's call runs that much longer
                yield self.env.timeout(2 * work)
            else:
                yield self.env.timeout(work)
            while replica.debt:  # time slices taken by co-located work during this call
                owed, replica.debt = replica.debt, 0.0
                yield self.env.timeout(owed)
        replica.ongoing -= 1
        self._route()
        return replica

    def _route(self) -> None:
        while self.waiting:
            free = [r for r in self.live if r.ready and r.ongoing < self.spec.max_ongoing_requests]
            if not free:
                return
            index = self.random.randrange(len(self.waiting))  # the waiting request that retries first
            model, event = self.waiting[index]
            del self.waiting[index]
            replica = min(free, key=lambda r: (model is not None and r.model != model, r.ongoing))
            replica.ongoing += 1
            event.succeed(replica)

    def ongoing(self) -> int:
        return len(self.waiting) + sum(r.ongoing for r in self.replicas)

    def autoscale(self) -> None:
        scaling = self.spec.autoscaling
        if scaling is None:
            return
        now = self.env.now
        self._samples.append((now, self.ongoing()))
        while self._samples and self._samples[0][0] < now - scaling.look_back_s:
            self._samples.popleft()
        average = sum(n for _, n in self._samples) / len(self._samples)
        desired = max(scaling.min_replicas, min(scaling.max_replicas,
                                                math.ceil(average / scaling.target_ongoing_requests - 1e-9)))
        current = len(self.live)
        for way, wanted, delay in (("up", desired > current, scaling.upscale_delay_s),
                                   ("down", desired < current, scaling.downscale_delay_s)):
            if not wanted:
                self._want_since[way] = None
                continue
            since = self._want_since[way] = self._want_since[way] if self._want_since[way] is not None else now
            if now - since >= delay:
                self._want_since[way] = None
                if way == "up":
                    for _ in range(desired - current):
                        self.add_replica()
                else:  # the least loaded go first
                    for replica in sorted(self.live, key=lambda r: (r.ready, r.ongoing))[:current - desired]:
                        self.env.process(self._stop(replica))

    def close(self) -> None:
        for replica in self.replicas:
            if replica.ready:
                self.replica_gpu_seconds += (self.env.now - replica.ready_at) * self.spec.gpus


class ServedAppModel:
    def __init__(self, app: ModelledApp, seed: int = 0) -> None:
        self.app = app
        self.env = simpy.Environment()
        self.random = random.Random(seed)
        self.cluster = Cluster(self.env, app)
        gang_type = app.gang_gpu_type
        routing = random.Random(f"{seed}:routing")
        self.text = Deployment(self.env, "TextEncoder", app.text, app.text.gpu_type or gang_type, self.cluster, routing)
        self.gangs = Deployment(self.env, "Denoiser", app.gang, gang_type, self.cluster, routing)
        self.vae = Deployment(self.env, "Vae", app.vae, app.vae.gpu_type or gang_type, self.cluster, routing)
        self.deployments = (self.text, self.gangs, self.vae)
        for stage in (self.text, self.vae):
            if stage.spec.shares_gang_gpu:
                stage.host_of = self._host_gang
        self.queue: list[JobRecord] = []
        self.reruns: set[int] = set()
        self.running = 0
        self.last_model: str | None = None
        self.running_models: list[str] = []
        self.records: list[JobRecord] = []
        self._claim = self.env.event()

    def _host_gang(self, replica: Replica) -> Replica | None:
        """The gang whose GPU a stage replica shares: the i-th replica is on the i-th gang's node."""
        for deployment in (self.text, self.vae):
            if replica in deployment.replicas:
                gangs = [gang for gang in self.gangs.replicas if gang.ready]
                return gangs[deployment.replicas.index(replica) % len(gangs)] if gangs else None
        return None

    # ------------------------------------------------------------------ the queue and the runner

    def run(self, arrivals: list[Arrival], until_s: float | None = None) -> Outcome:
        self.env.process(self._arrive(sorted(arrivals, key=lambda a: a.at_s)))
        self.env.process(self._dispatch())
        self.env.process(self._control())
        done = self.env.event()
        self._all_done, self._unfinished = done, len(arrivals)
        self.env.run(until=until_s if until_s is not None else done)
        for deployment in self.deployments:
            deployment.close()
        self.cluster.close()
        return Outcome(jobs=self.records, gpu_seconds=self.cluster.gpu_seconds,
                       replica_gpu_seconds=sum(d.replica_gpu_seconds for d in self.deployments), end_s=self.env.now,
                       replicas_over_time={d.name: d.history for d in self.deployments},
                       nodes_over_time=self.cluster.history)

    def _arrive(self, arrivals: list[Arrival]) -> Generator:
        for arrival in arrivals:
            yield self.env.timeout(max(0.0, arrival.at_s - self.env.now))
            record = JobRecord(arrival)
            self.records.append(record)
            self.queue.append(record)
            self._wake()

    def _wake(self) -> None:
        if not self._claim.triggered:
            self._claim.succeed()

    def _dispatch(self) -> Generator:
        while True:
            while self.running < self.app.max_running_jobs and (job := self._next()) is not None:
                self.queue.remove(job)
                self.running += 1
                self.last_model = job.arrival.task
                self.running_models.append(job.arrival.task)
                self.env.process(self._run(job))
            self._claim = self.env.event()
            yield self._claim

    def _next(self) -> JobRecord | None:
        if not self.queue:
            return None
        now = self.env.now

        def order(job: JobRecord) -> tuple:
            held = {*self.running_models, self.last_model}
            grouped = job.arrival.task in held or now - job.arrival.at_s >= self.app.model_group_delay_s
            return (id(job) not in self.reruns, PRIORITY_RANK[job.arrival.priority], not grouped, job.arrival.at_s)

        return min(self.queue, key=order)

    def _run(self, job: JobRecord) -> Generator:
        job.runs += 1
        if job.started_s is None:
            job.started_s = self.env.now
        try:
            yield from self._stages(job)
            job.completed_s = self.env.now
        except StageFailed:
            if job.runs < self.app.max_attempts:
                self.reruns.add(id(job))
                self.queue.append(job)
            else:
                job.failed, job.completed_s = True, self.env.now
        finally:
            self.running -= 1
            self.running_models.remove(job.arrival.task)
            self._wake()
            if job.completed_s is not None:  # ended: completed, or failed with no runs left
                self._unfinished -= 1
                if self._unfinished == 0:
                    self._all_done.succeed()

    def _control(self) -> Generator:
        while True:
            yield self.env.timeout(self.app.control_period_s)
            for deployment in self.deployments:
                deployment.autoscale()
            self.cluster.reap()

    # ------------------------------------------------------------------ one job's stages

    def _fails(self) -> bool:
        return self.app.fail_rate > 0 and self.random.random() < self.app.fail_rate

    def _stages(self, job: JobRecord) -> Generator:
        app, arrival, orch = self.app, job.arrival, self.app.orchestration
        self.reruns.discard(id(job))
        gang_profile = app.profiles[self.gangs.gpu_type]
        text_profile = app.profiles[self.text.gpu_type]
        vae_profile = app.profiles[self.vae.gpu_type]
        yield self.env.timeout(orch.per_job_s)
        # the default negative prompt is cached by the encoder: a job pays for its own prompt
        yield from self.text.call(lambda _: text_profile.text_encode_seconds / 2)
        yield self.env.timeout(orch.text_s)
        if self._fails():
            raise StageFailed("text")
        if arrival.task == "i2v":
            yield from self.vae.call(lambda _: vae_profile.vae_encode.at(arrival.shape.first_frame()))
        on_gang = app.decode_on == "gang"  # then decoded at the end of the denoise call, on the gang that denoised
        decoder_profile, decode_ranks = (gang_profile, app.gang_size) if on_gang else (vae_profile, 1)

        def decode_seconds() -> float:
            return decoder_profile.decode_seconds(arrival.shape, decode_ranks) + decoder_profile.mux.at(arrival.shape)

        yield from self.gangs.call(
            lambda gang: self._gang_seconds(gang, arrival, gang_profile) + (decode_seconds() if on_gang else 0.0),
            model=arrival.task, held_extra_s=orch.gang_held_s + (orch.decode_held_s if on_gang else 0.0))
        yield self.env.timeout(orch.gang_s - orch.gang_held_s)
        if self._fails():
            raise StageFailed("denoise")
        if not on_gang:
            yield from self.vae.call(lambda _: decode_seconds(), held_extra_s=orch.decode_held_s)
        yield self.env.timeout(orch.decode_s - orch.decode_held_s)
        if self._fails():
            raise StageFailed("decode")

    def _gang_seconds(self, gang: Replica, arrival: Arrival, profile: SimProfile) -> float:
        seconds = self.app.offload_s
        if gang.model is not None and gang.model != arrival.task:
            seconds += profile.weight_swap_seconds
        if gang.lora != arrival.lora and arrival.lora is not None:
            seconds += self.app.lora_load_s
        gang.model, gang.lora = arrival.task, arrival.lora
        cfg, ulysses = mesh_of(self.app.gang_size)
        steps = arrival.steps * (1.0 - self.app.step_cache_skip)
        return seconds + steps * profile.step_seconds(arrival.shape, cfg, ulysses)


def quantile(values: list[float], q: float) -> float:
    """The same nearest-rank quantile as benchmarks/cluster_report.py's, so that model and measurement agree."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
