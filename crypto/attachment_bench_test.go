package crypto

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// The attachment benchmarks report, besides wall-clock MB/s, the CPU time
// the process spent per MiB of plaintext (cpu-ms/MiB, user + system, all
// goroutines): on a shared machine wall-clock speed-ups from parallelism
// come and go with the load, the CPU cost per byte does not.

const benchAttachmentSize = 16 << 20

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, start time.Duration, plain int64) {
	b.ReportMetric(float64(cpuTime()-start)/float64(time.Millisecond)/(float64(b.N)*float64(plain)/(1<<20)), "cpu-ms/MiB")
}

func benchBlob(b *testing.B) (key, blob, digest []byte) {
	key, _ = NewAttachmentKey()
	e, _ := EncryptAttachment(bytes.NewReader(make([]byte, benchAttachmentSize)), key)
	blob, _ = io.ReadAll(e)
	digest, _ = e.Digest()
	return key, blob, digest
}

func BenchmarkAttachmentEncryptCPU(b *testing.B) {
	key, _ := NewAttachmentKey()
	pt := make([]byte, benchAttachmentSize)
	buf := make([]byte, 32<<10) // net/http's copy buffer
	b.SetBytes(benchAttachmentSize)
	b.ResetTimer()
	start := cpuTime()
	for b.Loop() {
		e, err := EncryptAttachment(bytes.NewReader(pt), key)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{e}, buf); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, start, benchAttachmentSize)
}

// BenchmarkAttachmentDecryptAtCPU is DecryptAttachment: two passes over a
// stored blob.
func BenchmarkAttachmentDecryptAtCPU(b *testing.B) {
	key, blob, d := benchBlob(b)
	b.SetBytes(benchAttachmentSize)
	b.ResetTimer()
	start := cpuTime()
	for b.Loop() {
		if _, err := DecryptAttachment(io.Discard, bytes.NewReader(blob), int64(len(blob)), key, d); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, start, benchAttachmentSize)
}

// BenchmarkAttachmentDecryptStreamCPU is AttachmentDecrypter: one pass
// over a blob written in 128 KiB pieces (a download's copy buffer).
func BenchmarkAttachmentDecryptStreamCPU(b *testing.B) {
	key, blob, d := benchBlob(b)
	b.SetBytes(benchAttachmentSize)
	b.ResetTimer()
	start := cpuTime()
	for b.Loop() {
		decryptInChunks(b, io.Discard, blob, key, d)
	}
	reportCPU(b, start, benchAttachmentSize)
}

// BenchmarkAttachmentDecryptStreamFileCPU is the one-pass path into a
// file, as a download saves it (page cache; no sync).
func BenchmarkAttachmentDecryptStreamFileCPU(b *testing.B) {
	key, blob, d := benchBlob(b)
	f, err := os.Create(filepath.Join(b.TempDir(), "out"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.SetBytes(benchAttachmentSize)
	b.ResetTimer()
	start := cpuTime()
	for b.Loop() {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			b.Fatal(err)
		}
		decryptInChunks(b, f, blob, key, d)
	}
	reportCPU(b, start, benchAttachmentSize)
}

// decryptInChunks feeds blob to an AttachmentDecrypter writing to dst in
// 128 KiB writes, as a download arrives.
func decryptInChunks(b *testing.B, dst io.Writer, blob, key, digest []byte) {
	dec, err := NewAttachmentDecrypter(dst, int64(len(blob)), key, digest)
	if err != nil {
		b.Fatal(err)
	}
	for rest := blob; len(rest) > 0; {
		k := min(len(rest), 128<<10)
		if _, err := dec.Write(rest[:k]); err != nil {
			b.Fatal(err)
		}
		rest = rest[k:]
	}
	if _, err := dec.Finish(); err != nil {
		b.Fatal(err)
	}
}
