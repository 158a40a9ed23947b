"""The simulator's fault injector: partitions, crashes (power cuts across a majority too),
leadership transfers, pauses, membership changes with wiped disks, and the amnesia fault, each
drawn from the run's seeded stream (tests.simulator.Simulation mixes this in; the guards that
keep the injector within the fault model are here with the faults they guard).
"""

from __future__ import annotations

import random


class FaultInjection:
    """The faults of a Simulation (whose state they change: ``nodes``, ``blocked``, ...)."""

    def _fault(self, kind: str) -> None:
        rng = self.rng
        if self.healed:
            return
        if kind == "partition":
            self.blocked = set()
            shape = rng.choice(["heal", "symmetric", "asymmetric", "isolate"])
            ids = self.all_ids
            if shape == "symmetric":
                group = set(rng.sample(ids, rng.randint(1, len(ids) - 1)))
                self.blocked = {(a, b) for a in ids for b in ids
                                if (a in group) != (b in group)}
            elif shape == "asymmetric":
                for _ in range(rng.randint(1, self.n)):
                    a, b = rng.sample(ids, 2)
                    self.blocked.add((a, b))
            elif shape == "isolate":
                x = rng.choice(ids)
                self.blocked = {(a, b) for a in ids for b in ids
                                if a != b and x in (a, b)}
            self._schedule(rng.expovariate(1 / self.mix.partition_every), "partition", None)
        elif kind == "crash":
            # Half the crashes hit the leader: that is where lost state hurts most.
            # A fifth of them are power cuts across a majority or the whole cluster at once.
            leaders = [s.id for s in self.nodes.values() if s.up and s.node.role == "leader"]
            started = [s.id for s in self.nodes.values() if s.started]
            if rng.random() < 0.2:
                victims = rng.sample(started, rng.choice([len(started) // 2 + 1, len(started)]))
            elif leaders and rng.random() < 0.5:
                victims = [rng.choice(leaders)]
            else:
                victims = [rng.choice(started)]
            for victim in victims:
                sim = self.nodes[victim]
                if sim.up:
                    self._crash(sim)
                    self._schedule(rng.uniform(0.01, 0.5), "restart", sim.id)
            self._schedule(rng.expovariate(1 / self.mix.crash_every), "crash", None)
        elif kind == "transfer":
            leaders = [s for s in self.nodes.values() if s.up and s.node.role == "leader"]
            if leaders:
                sim = rng.choice(leaders)
                sim.node.transfer_leadership(("transfer",), rng.choice(self.ids), self.now)
                self._drain(sim)
            self._schedule(rng.expovariate(1 / self.mix.transfer_every), "transfer", None)
        elif kind == "member":
            self._membership()
            self._schedule(rng.expovariate(1 / self.mix.member_every), "member", None)
        elif kind == "pause":
            sim = self.nodes[rng.choice(self.all_ids)]
            sim.paused_until = max(sim.paused_until, self.now + rng.uniform(0.05, 1.0))
            self._schedule(rng.expovariate(1 / self.mix.pause_every), "pause", None)

    def _best_node(self):
        """The running node that knows the most (what the cluster is becoming)."""
        nodes = [s.node for s in self.nodes.values() if s.up]
        return max(nodes, key=lambda n: (n.commit_index, n.configuration.effective))

    def _live_configs(self):
        """Every configuration a running node still knows (a slot one node knows chosen may
        still have to be learned by the others through a quorum of an older one), by effective
        slot, and the voters among them that are not running under the incarnation named."""
        configs = {}
        for sim in self.nodes.values():
            if sim.up:
                for cfg in sim.node.membership.configs:
                    configs[(cfg.slot, cfg.effective)] = cfg
        configs = [configs[k] for k in sorted(configs, key=lambda k: (k[1], k[0]))]
        unrestored = [m for cfg in configs for m in cfg.members
                      if m.voter and m.incarnation != self.nodes[m.id].member_incarnation]
        return configs, unrestored

    def _latest_configuration(self):
        return self._best_node().configuration

    def _membership(self) -> None:
        """Add a machine, remove a member, or wipe a member's disk and bring it back joining."""
        rng = self.rng
        if not any(s.up for s in self.nodes.values()):
            return
        leaders = [s for s in self.nodes.values() if s.up and s.node.role == "leader"]
        latest = self._latest_configuration()
        # A wipe loses an acceptor's state for good: at most one member may be without its
        # state (wiped, not yet a voter under its new incarnation) at a time.
        # Every configuration that may still decide a slot counts (a cluster of two voters
        # tolerates no loss at all).
        configs, unrestored = self._live_configs()
        action = rng.choice(["add", "remove", "wipe"])
        if action == "wipe" and not unrestored and min(len(c.voters) for c in configs) >= 4:
            sim = self.nodes[rng.choice(latest.voters)]
            if sim.up:
                self._crash(sim)
            sim.storage.wipe()
            sim.checked_commit = sim.promised = 0
            sim.member_incarnation = rng.getrandbits(62) + 1
            self.wipes += 1
            self._schedule(rng.uniform(0.01, 0.5), "restart", sim.id)
            return
        if not leaders:
            return
        sim = rng.choice(leaders)
        # A configuration of two voters survives no lost disk: where disks may be lost
        # (the amnesia fault), removals stop at three.
        floor = 3 if self.amnesia_every else 2
        if action == "add" or len(latest.voters) <= floor or unrestored:
            candidates = [i for i in self.all_ids if latest.get(i) is None]
            if not candidates:
                return
            new = self.nodes[rng.choice(candidates)]
            sim.node.change_members(("member",), ("add", new.id, None, None), self.now)
            if not new.started:
                new.member_incarnation = rng.getrandbits(62) + 1
                self._schedule(rng.uniform(0.0, 0.5), "restart", new.id)
        else:
            victim = rng.choice(latest.ids)
            sim.node.change_members(("member",), ("remove", victim), self.now)
        self.changes += 1
        self._drain(sim)

    def _amnesia(self, first: bool = False) -> None:
        """The amnesia fault: a voting initial member loses its data directory (state, snapshot
        and incarnation file) and is restarted as systemd would, without --join. It must decide
        its incarnation (daemon.core.incarnation) before it votes. Drawn from a stream of its own,
        so seeds without it run as they always did; at most one member is without its state
        at a time (as for the membership fault's wipes)."""
        if first:
            own = random.Random(f"amnesia-{self.seed}")
            self.amnesia_every = own.uniform(0.3, 2.0) if own.random() < 0.35 else 0.0
            if self.amnesia_every:
                self.mix_text += f" amnesia/{self.amnesia_every:.1f}s"
                self._schedule(own.expovariate(1 / self.amnesia_every), "amnesia", None)
            return
        if self.healed:
            return
        self.trace.update(b"amnesia")
        rng = self.rng
        self._schedule(rng.expovariate(1 / self.amnesia_every), "amnesia", None)
        # Only a whole, settled cluster loses a disk: every member up, every node's view of
        # every configuration that may still decide a slot naming each voter's present
        # incarnation (a second loss before the first member's return is known everywhere can
        # leave no quorum that knows it), and no membership change on its way (a removal
        # chosen after the loss could leave two voters, one of them without its state).
        up = [s.node for s in self.nodes.values() if s.up]
        if not up:
            return
        configs, unrestored = self._live_configs()
        if any(not self.nodes[i].up for i in configs[-1].ids):
            return
        victims = [i for i in configs[-1].voters if i in self.ids]
        changing = any(n.role == "leader" and n.membership.in_progress() for n in up)
        if unrestored or changing or not victims or min(len(c.voters) for c in configs) < 3:
            return
        sim = self.nodes[rng.choice(victims)]
        if sim.up:
            self._crash(sim)
        sim.storage.wipe()
        sim.checked_commit = sim.promised = 0
        sim.member_incarnation = None  # no incarnation file: the node decides it
        self.wipes += 1
        self._schedule(rng.uniform(0.01, 0.5), "restart", sim.id)
