// etcdbench drives etcd with its native gRPC client (clientv3), closed loop, the way etcd's
// own `benchmark put` does: -conns gRPC connections, -clients goroutines on each, every
// goroutine putting one value after another to a random key of -keys. Latency is per put, from
// the call to its reply.
//
// For the watch and range-read comparisons (issue 19, item 5): -read-ratio R makes that
// fraction of the operations reads (linearizable Gets, etcd's default) of one random key, or
// with -range-limit L of up to L keys from a random key on; -watchers N opens N watches of every
// key the writers write (prefix "k") over -watch-conns connections of their own, spread over
// -watch-endpoints, and counts the changes they deliver.
//
// It prints one line `{"event": "measure"}` when the warmup ends and the measured interval
// starts, and at the end one JSON object with the fields the peer scripts report (commits,
// commits_per_s, latency_ms with p50/p90/p99/p999/max/mean as nearest ranks, errors,
// cpu_seconds of this process over the measured interval), so that bench/peers/etcd_native.py
// can read the etcd members' CPU over the same interval.
//
// Built offline against Debian's golang-etcd-server-dev in GOPATH mode by
// bench/peers/etcd_native.py (see there).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
)

type summary struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

type result struct {
	Commits     int      `json:"commits"`
	CommitsPerS float64  `json:"commits_per_s"`
	LatencyMs   *summary `json:"latency_ms"`
	Errors      int      `json:"errors"`
	CPUSeconds  float64  `json:"cpu_seconds"`
	Conns       int      `json:"conns"`
	Clients     int      `json:"clients_per_conn"`
	ValueSize   int      `json:"value_size"`
	Keys        int      `json:"keys"`
	DurationS   float64  `json:"duration_s"`
	WarmupS     float64  `json:"warmup_s"`
	FirstError  string   `json:"first_error,omitempty"`
	Reads       *reads   `json:"reads,omitempty"`
	Watch       *watch   `json:"watch,omitempty"`
}

type reads struct {
	Reads      int      `json:"reads"`
	ReadsPerS  float64  `json:"reads_per_s"`
	KeysPerS   float64  `json:"keys_per_s"`
	LatencyMs  *summary `json:"latency_ms"`
	ReadRatio  float64  `json:"read_ratio"`
	RangeLimit int      `json:"range_limit"`
}

type watch struct {
	Watchers   int     `json:"watchers"`
	Conns      int     `json:"conns"`
	Started    int     `json:"started"`
	Events     int64   `json:"events"`
	EventsPerS float64 `json:"events_per_s"`
	Canceled   int     `json:"canceled"`
}

// percentile is the nearest rank, as daemon/tools/stats.py computes it.
func percentile(sorted []float64, q float64) float64 {
	n := len(sorted)
	k := int(math.Ceil(q*float64(n)-1e-9)) - 1
	if k < 0 {
		k = 0
	}
	if k > n-1 {
		k = n - 1
	}
	return sorted[k]
}

func summarize(seconds []float64) *summary {
	if len(seconds) == 0 {
		return nil
	}
	sort.Float64s(seconds)
	total := 0.0
	for _, v := range seconds {
		total += v
	}
	ms := 1000.0
	return &summary{P50: percentile(seconds, 0.5) * ms, P90: percentile(seconds, 0.9) * ms,
		P99: percentile(seconds, 0.99) * ms, P999: percentile(seconds, 0.999) * ms,
		Max: seconds[len(seconds)-1] * ms, Mean: total / float64(len(seconds)) * ms}
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

type worker struct {
	lat    []float64
	rlat   []float64
	keys   int64
	errors int
	first  error
}

type load struct {
	keys        []string
	value       string
	readRatio   float64
	rangeLimit  int
	measureFrom time.Time
	stopAt      time.Time
	timeout     time.Duration
}

// run puts (or reads, a readRatio of the time) until stopAt on cli, recording the latencies
// of the operations answered inside [measureFrom, stopAt).
func (w *worker) run(cli *clientv3.Client, seed int64, l *load) {
	rng := rand.New(rand.NewSource(seed))
	for {
		t0 := time.Now()
		if !t0.Before(l.stopAt) {
			return
		}
		key := l.keys[rng.Intn(len(l.keys))]
		read := l.readRatio > 0 && rng.Float64() < l.readRatio
		ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
		var err error
		var got int64
		if read && l.rangeLimit > 0 {
			var resp *clientv3.GetResponse
			resp, err = cli.Get(ctx, key, clientv3.WithFromKey(), clientv3.WithLimit(int64(l.rangeLimit)))
			if err == nil {
				got = int64(len(resp.Kvs))
			}
		} else if read {
			var resp *clientv3.GetResponse
			resp, err = cli.Get(ctx, key)
			if err == nil {
				got = int64(len(resp.Kvs))
			}
		} else {
			_, err = cli.Put(ctx, key, l.value)
		}
		cancel()
		t1 := time.Now()
		if err != nil {
			w.errors++
			if w.first == nil {
				w.first = err
			}
			continue
		}
		if !t1.Before(l.measureFrom) && t1.Before(l.stopAt) {
			if read {
				w.rlat = append(w.rlat, t1.Sub(t0).Seconds())
				w.keys += got
			} else {
				w.lat = append(w.lat, t1.Sub(t0).Seconds())
			}
		}
	}
}

// watchAll opens n watches of prefix "k" over conns new connections, to the urls in turn, and
// counts into
// out the changes delivered inside the interval that window holds when they arrive; it
// returns once every watch is open (or failed to open), with a function that stops them and
// closes the connections.
func watchAll(urls []string, n, conns int, window *atomic.Value, out *watch) func() {
	out.Watchers, out.Conns = n, conns
	ctx, cancel := context.WithCancel(context.Background())
	cs := make([]*clientv3.Client, conns)
	for i := range cs {
		url := urls[i%len(urls)]
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 10 * time.Second})
		if err != nil {
			fail("watch connection to %s: %v", url, err)
		}
		cs[i] = cli
	}
	var opened, done sync.WaitGroup
	var mu sync.Mutex
	for i := 0; i < n; i++ {
		opened.Add(1)
		done.Add(1)
		go func(cli *clientv3.Client) {
			defer done.Done()
			// WithCreatedNotify: the first response says the watch is open.
			ch := cli.Watch(clientv3.WithRequireLeader(ctx), "k", clientv3.WithPrefix(),
				clientv3.WithCreatedNotify())
			first, created, counted, canceled := true, false, int64(0), false
			for resp := range ch {
				if first {
					first, created = false, resp.Created
					opened.Done()
				}
				if resp.Canceled {
					canceled = true
				}
				now, in := time.Now(), window.Load().([2]time.Time)
				if !in[0].IsZero() && !now.Before(in[0]) && now.Before(in[1]) {
					counted += int64(len(resp.Events))
				}
			}
			if first {
				opened.Done()
			}
			mu.Lock()
			out.Events += counted
			if created {
				out.Started++
			}
			if canceled {
				out.Canceled++
			}
			mu.Unlock()
		}(cs[i%conns])
	}
	opened.Wait()
	return func() {
		cancel()
		done.Wait()
		for _, cli := range cs {
			cli.Close()
		}
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "etcdbench: "+format+"\n", args...)
	os.Exit(2)
}

// connect opens n clients (gRPC connections) to urls.
func connect(urls []string, n int) []*clientv3.Client {
	cs := make([]*clientv3.Client, n)
	for i := range cs {
		cli, err := clientv3.New(clientv3.Config{Endpoints: urls, DialTimeout: 10 * time.Second})
		if err != nil {
			fail("connect to %v: %v", urls, err)
		}
		cs[i] = cli
	}
	return cs
}

// newLoad is the workload's key space k0..k<nkeys-1> and one random value of valueSize bytes.
func newLoad(nkeys, valueSize int) *load {
	keys := make([]string, nkeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	raw := make([]byte, valueSize)
	rand.New(rand.NewSource(time.Now().UnixNano())).Read(raw)
	return &load{keys: keys, value: string(raw)}
}

// collect merges the workers' measurements: commits, latencies, errors and reads.
func collect(workers []*worker, duration time.Duration, readRatio float64, rangeLimit int) result {
	var all, rall []float64
	var rkeys int64
	r := result{DurationS: duration.Seconds()}
	for _, w := range workers {
		all = append(all, w.lat...)
		rall = append(rall, w.rlat...)
		rkeys += w.keys
		r.Errors += w.errors
		if w.first != nil && r.FirstError == "" {
			r.FirstError = w.first.Error()
		}
	}
	r.Commits = len(all)
	r.CommitsPerS = float64(len(all)) / duration.Seconds()
	r.LatencyMs = summarize(all)
	if readRatio > 0 {
		r.Reads = &reads{Reads: len(rall), ReadsPerS: float64(len(rall)) / duration.Seconds(),
			KeysPerS: float64(rkeys) / duration.Seconds(), LatencyMs: summarize(rall),
			ReadRatio: readRatio, RangeLimit: rangeLimit}
	}
	return r
}

// config is what the command line asks for.
type config struct {
	endpoints      string
	conns          int
	clients        int
	valueSize      int
	nkeys          int
	duration       time.Duration
	warmup         time.Duration
	timeout        time.Duration
	readRatio      float64
	rangeLimit     int
	watchers       int
	watchConns     int
	watchEndpoints string
}

// parseFlags reads and checks the command line (exit 2 naming what is wrong).
func parseFlags() config {
	endpoints := flag.String("endpoints", "", "comma-separated client URLs (required)")
	conns := flag.Int("conns", 1, "gRPC connections")
	clients := flag.Int("clients", 1, "goroutines per connection, each one put at a time")
	valueSize := flag.Int("value-size", 64, "bytes per value")
	nkeys := flag.Int("keys", 100000, "key space: keys k0..k<keys-1>")
	duration := flag.Duration("duration", 10*time.Second, "measured interval")
	warmup := flag.Duration("warmup", 2*time.Second, "load before the measured interval")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of one operation")
	readRatio := flag.Float64("read-ratio", 0, "fraction of the operations that are reads")
	rangeLimit := flag.Int("range-limit", 0, "reads are ranges of up to this many keys (0: one key)")
	watchers := flag.Int("watchers", 0, "watches of every key written (prefix \"k\")")
	watchConns := flag.Int("watch-conns", 0, "connections the watches share (default: one per 10)")
	watchEndpoints := flag.String("watch-endpoints", "",
		"client URLs the watch connections go to, in turn (default: -endpoints)")
	flag.Parse()
	c := config{endpoints: *endpoints, conns: *conns, clients: *clients, valueSize: *valueSize,
		nkeys: *nkeys, duration: *duration, warmup: *warmup, timeout: *timeout,
		readRatio: *readRatio, rangeLimit: *rangeLimit, watchers: *watchers,
		watchConns: *watchConns, watchEndpoints: *watchEndpoints}
	if c.endpoints == "" {
		fail("-endpoints is required")
	}
	if c.conns < 1 || c.clients < 1 || c.valueSize < 0 || c.nkeys < 1 || c.duration <= 0 || c.warmup < 0 {
		fail("need -conns >= 1, -clients >= 1, -value-size >= 0, -keys >= 1, -duration > 0, -warmup >= 0")
	}
	if c.readRatio < 0 || c.readRatio > 1 || c.rangeLimit < 0 || c.watchers < 0 || c.watchConns < 0 {
		fail("need 0 <= -read-ratio <= 1, -range-limit >= 0, -watchers >= 0, -watch-conns >= 0")
	}
	if c.watchers > 0 && c.watchConns == 0 {
		c.watchConns = (c.watchers + 9) / 10
	}
	return c
}

func main() {
	c := parseFlags()
	urls := strings.Split(c.endpoints, ",")
	cs := connect(urls, c.conns)
	defer func() {
		for _, cli := range cs {
			cli.Close()
		}
	}()
	l := newLoad(c.nkeys, c.valueSize)
	l.readRatio, l.rangeLimit, l.timeout = c.readRatio, c.rangeLimit, c.timeout
	var w *watch
	var window atomic.Value // [2]time.Time: the measured interval, set once the watches are open
	window.Store([2]time.Time{})
	stopWatching := func() {}
	if c.watchers > 0 { // open before the load: every change of the measured interval is seen
		w = &watch{}
		wurls := urls
		if c.watchEndpoints != "" {
			wurls = strings.Split(c.watchEndpoints, ",")
		}
		stopWatching = watchAll(wurls, c.watchers, c.watchConns, &window, w)
	}
	start := time.Now()
	l.measureFrom = start.Add(c.warmup)
	l.stopAt = l.measureFrom.Add(c.duration)
	window.Store([2]time.Time{l.measureFrom, l.stopAt})
	workers := make([]*worker, c.conns*c.clients)
	var wg sync.WaitGroup
	for i := range workers {
		workers[i] = &worker{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			workers[i].run(cs[i%c.conns], start.UnixNano()+int64(i), l)
		}(i)
	}
	time.Sleep(time.Until(l.measureFrom))
	cpuFrom := cpuSeconds()
	fmt.Println(`{"event": "measure"}`)
	time.Sleep(time.Until(l.stopAt))
	cpu := cpuSeconds() - cpuFrom
	fmt.Println(`{"event": "stop"}`)
	wg.Wait()
	stopWatching()

	r := collect(workers, c.duration, c.readRatio, c.rangeLimit)
	r.Watch, r.Conns, r.Clients, r.ValueSize, r.Keys = w, c.conns, c.clients, c.valueSize, c.nkeys
	r.WarmupS, r.CPUSeconds = c.warmup.Seconds(), cpu
	if r.Watch != nil {
		r.Watch.EventsPerS = float64(r.Watch.Events) / c.duration.Seconds()
	}
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}
