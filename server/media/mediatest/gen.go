package mediatest

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"io"
)

// Marker is written into every generated plaintext (at offset 0 and every
// MiB), so that a scan of the stored object proves no plaintext reached
// the server.
var Marker = []byte("HUSH-PLAINTEXT-MARKER-7f3c9a1e")

// plain is a reader of size pseudo-random bytes (AES-CTR keystream, fast
// even under the race detector) with Marker at offset 0 and every MiB. It
// hashes what it yields, and never holds more than one 64 KiB block: the
// tests use it to prove the upload path streams.
type plain struct {
	ctr       cipher.Stream
	size, pos int64
	block     []byte
	zero      []byte
	off       int // read position within block
	sum       hash.Hash
}

const genBlock = 64 << 10

func newPlain(seed uint64, size int64) *plain {
	var key [32]byte
	binary.BigEndian.PutUint64(key[:], seed)
	blk, err := aes.NewCipher(key[:])
	if err != nil {
		panic(err) // 32-byte key: cannot fail
	}
	p := &plain{
		ctr:   cipher.NewCTR(blk, make([]byte, aes.BlockSize)),
		size:  size,
		block: make([]byte, genBlock),
		zero:  make([]byte, genBlock),
		off:   genBlock,
		sum:   sha256.New(),
	}
	return p
}

func (p *plain) Read(b []byte) (int, error) {
	if p.pos >= p.size {
		return 0, io.EOF
	}
	if p.off == len(p.block) {
		p.ctr.XORKeyStream(p.block, p.zero)
		if p.pos%(1<<20) == 0 {
			copy(p.block, Marker)
		}
		p.off = 0
	}
	n := copy(b, p.block[p.off:])
	if rest := p.size - p.pos; int64(n) > rest {
		n = int(rest)
	}
	p.off += n
	p.pos += int64(n)
	p.sum.Write(b[:n])
	return n, nil
}

// Sum returns the SHA-256 of the bytes read so far.
func (p *plain) Sum() []byte { return p.sum.Sum(nil) }

// scanner looks for Marker in a stream, across chunk boundaries, and
// hashes it.
type scanner struct {
	tail  []byte
	found bool
	n     int64
	sum   hash.Hash
}

func newScanner() *scanner { return &scanner{sum: sha256.New()} }

func (s *scanner) Write(b []byte) (int, error) {
	s.sum.Write(b)
	s.n += int64(len(b))
	if s.found {
		return len(b), nil
	}
	// Check the seam between the previous chunk and this one.
	if len(s.tail) > 0 {
		head := b
		if len(head) > len(Marker)-1 {
			head = head[:len(Marker)-1]
		}
		seam := append(append([]byte(nil), s.tail...), head...)
		if bytes.Contains(seam, Marker) {
			s.found = true
		}
	}
	if bytes.Contains(b, Marker) {
		s.found = true
	}
	keep := len(Marker) - 1
	if len(b) >= keep {
		s.tail = append(s.tail[:0], b[len(b)-keep:]...)
	} else {
		s.tail = append(s.tail, b...)
		if len(s.tail) > keep {
			s.tail = s.tail[len(s.tail)-keep:]
		}
	}
	return len(b), nil
}
