package loadgen

import (
	"slices"
	"sync"
	"time"
)

// Latencies collects durations from many goroutines, every one of them
// (no sampling): a run of a million messages costs 8 MB.
type Latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

// Add records d.
func (l *Latencies) Add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// AddAll records ds.
func (l *Latencies) AddAll(ds []time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, ds...)
	l.mu.Unlock()
}

// Len is the number of samples.
func (l *Latencies) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.d)
}

// Percentiles in milliseconds, as the JSON output names them.
type Percentiles struct {
	N     int     `json:"n"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
	Max   float64 `json:"max"`
	Mean  float64 `json:"mean"`
	Units string  `json:"units"`
}

// Percentiles sorts the samples and reads the percentiles (nearest rank).
func (l *Latencies) Percentiles() Percentiles {
	l.mu.Lock()
	d := slices.Clone(l.d)
	l.mu.Unlock()
	return PercentilesOf(d)
}

// PercentilesOf computes percentiles of d (sorting it in place).
func PercentilesOf(d []time.Duration) Percentiles {
	p := Percentiles{N: len(d), Units: "ms"}
	if len(d) == 0 {
		return p
	}
	slices.Sort(d)
	at := func(q float64) float64 {
		i := int(q*float64(len(d))+0.999999) - 1 // nearest rank
		i = min(max(i, 0), len(d)-1)
		return ms(d[i])
	}
	var sum time.Duration
	for _, v := range d {
		sum += v
	}
	p.P50, p.P90, p.P99, p.P999 = at(0.50), at(0.90), at(0.99), at(0.999)
	p.Max = ms(d[len(d)-1])
	p.Mean = ms(sum / time.Duration(len(d)))
	return p
}

func ms(d time.Duration) float64 {
	return float64(d.Round(time.Microsecond)) / float64(time.Millisecond)
}
