// etcdbench drives etcd with its native gRPC client (clientv3), closed loop, the way etcd's
// own `benchmark put` does: -conns gRPC connections, -clients goroutines on each, every
// goroutine putting one value after another to a random key of -keys. Latency is per put, from
// the call to its reply.
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
	errors int
	first  error
}

// run puts until stopAt on cli, recording the latencies of the puts answered inside
// [measureFrom, stopAt).
func (w *worker) run(cli *clientv3.Client, seed int64, keys []string, value string,
	measureFrom, stopAt time.Time, timeout time.Duration) {
	rng := rand.New(rand.NewSource(seed))
	for {
		t0 := time.Now()
		if !t0.Before(stopAt) {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		_, err := cli.Put(ctx, keys[rng.Intn(len(keys))], value)
		cancel()
		t1 := time.Now()
		if err != nil {
			w.errors++
			if w.first == nil {
				w.first = err
			}
			continue
		}
		if !t1.Before(measureFrom) && t1.Before(stopAt) {
			w.lat = append(w.lat, t1.Sub(t0).Seconds())
		}
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "etcdbench: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	endpoints := flag.String("endpoints", "", "comma-separated client URLs (required)")
	conns := flag.Int("conns", 1, "gRPC connections")
	clients := flag.Int("clients", 1, "goroutines per connection, each one put at a time")
	valueSize := flag.Int("value-size", 64, "bytes per value")
	nkeys := flag.Int("keys", 100000, "key space: keys k0..k<keys-1>")
	duration := flag.Duration("duration", 10*time.Second, "measured interval")
	warmup := flag.Duration("warmup", 2*time.Second, "load before the measured interval")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of one put")
	flag.Parse()
	if *endpoints == "" {
		fail("-endpoints is required")
	}
	if *conns < 1 || *clients < 1 || *valueSize < 0 || *nkeys < 1 || *duration <= 0 || *warmup < 0 {
		fail("need -conns >= 1, -clients >= 1, -value-size >= 0, -keys >= 1, -duration > 0, -warmup >= 0")
	}
	urls := strings.Split(*endpoints, ",")
	keys := make([]string, *nkeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	raw := make([]byte, *valueSize)
	rand.New(rand.NewSource(time.Now().UnixNano())).Read(raw)
	value := string(raw)

	cs := make([]*clientv3.Client, *conns)
	for i := range cs {
		cli, err := clientv3.New(clientv3.Config{Endpoints: urls, DialTimeout: 10 * time.Second})
		if err != nil {
			fail("connect to %s: %v", *endpoints, err)
		}
		defer cli.Close()
		cs[i] = cli
	}

	start := time.Now()
	measureFrom := start.Add(*warmup)
	stopAt := measureFrom.Add(*duration)
	workers := make([]*worker, *conns**clients)
	var wg sync.WaitGroup
	for i := range workers {
		workers[i] = &worker{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			workers[i].run(cs[i%*conns], start.UnixNano()+int64(i), keys, value, measureFrom,
				stopAt, *timeout)
		}(i)
	}
	time.Sleep(time.Until(measureFrom))
	cpuFrom := cpuSeconds()
	fmt.Println(`{"event": "measure"}`)
	time.Sleep(time.Until(stopAt))
	cpu := cpuSeconds() - cpuFrom
	fmt.Println(`{"event": "stop"}`)
	wg.Wait()

	var all []float64
	r := result{Conns: *conns, Clients: *clients, ValueSize: *valueSize, Keys: *nkeys,
		DurationS: duration.Seconds(), WarmupS: warmup.Seconds(), CPUSeconds: cpu}
	for _, w := range workers {
		all = append(all, w.lat...)
		r.Errors += w.errors
		if w.first != nil && r.FirstError == "" {
			r.FirstError = w.first.Error()
		}
	}
	r.Commits = len(all)
	r.CommitsPerS = float64(len(all)) / duration.Seconds()
	r.LatencyMs = summarize(all)
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}
