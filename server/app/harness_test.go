package app

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/keyserver/ksclient"
	"github.com/hushchat/hush/protocol"
)

// device is a real hush device: Signal keys from package crypto,
// registered at the key server, speaking the relay protocol.
type device struct {
	t       testing.TB
	ks      *ksclient.Client
	proto   *crypto.Protocol
	id      *crypto.IdentityKeyPair
	account string
	devID   uint32
	token   string
	base    string // http://host:port
}

func (d *device) addr() crypto.Address { return crypto.Address{Name: d.account, DeviceID: d.devID} }

func newKeys(t testing.TB) (*crypto.IdentityKeyPair, uint32, ksclient.DeviceKeys, []*crypto.PreKey, *crypto.SignedPreKey) {
	t.Helper()
	id, err := crypto.GenerateIdentityKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	reg, err := crypto.GenerateRegistrationID()
	if err != nil {
		t.Fatal(err)
	}
	spk, err := crypto.GenerateSignedPreKey(id, 1)
	if err != nil {
		t.Fatal(err)
	}
	pks, _, err := crypto.GeneratePreKeys(1, 10)
	if err != nil {
		t.Fatal(err)
	}
	lr, err := crypto.GenerateLastResortPreKey()
	if err != nil {
		t.Fatal(err)
	}
	sp := spk.Public()
	keys := ksclient.DeviceKeys{
		IdentityKey:    id.PublicKey(),
		RegistrationID: reg,
		SignedPreKey:   ksclient.SignedPreKey{ID: sp.ID, PublicKey: sp.PublicKey, Signature: sp.Signature},
		LastResort:     ksclient.PreKey{ID: lr.Public().ID, PublicKey: lr.Public().PublicKey},
	}
	for _, p := range pks {
		keys.OneTime = append(keys.OneTime, ksclient.PreKey{ID: p.Public().ID, PublicKey: p.Public().PublicKey})
	}
	return id, reg, keys, append(pks, lr), spk
}

func setupDevice(t testing.TB, base string, ks *ksclient.Client, id *crypto.IdentityKeyPair, reg uint32, s *ksclient.Session, pks []*crypto.PreKey, spk *crypto.SignedPreKey) *device {
	t.Helper()
	p, err := crypto.New(crypto.Config{Address: crypto.Address{Name: s.Account, DeviceID: s.Device}, Identity: id, RegistrationID: reg, Store: crypto.NewMemoryStore()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := p.StorePreKeys(ctx, pks); err != nil {
		t.Fatal(err)
	}
	if err := p.StoreSignedPreKey(ctx, spk); err != nil {
		t.Fatal(err)
	}
	return &device{t: t, ks: ks, proto: p, id: id, account: s.Account, devID: s.Device, token: s.Token, base: base}
}

// register creates account name with its first device.
func register(t testing.TB, base, name string) *device {
	t.Helper()
	ks, err := ksclient.New(base)
	if err != nil {
		t.Fatal(err)
	}
	id, reg, keys, pks, spk := newKeys(t)
	s, err := ks.Register(context.Background(), name, "", keys, id.Sign)
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	return setupDevice(t, base, ks, id, reg, s, pks, spk)
}

// addDevice adds a device to d's account.
func (d *device) addDevice(t testing.TB) *device {
	t.Helper()
	id, reg, keys, pks, spk := newKeys(t)
	s, err := d.ks.AddDevice(context.Background(), d.token, d.account, keys, id.Sign)
	if err != nil {
		t.Fatalf("add device to %s: %v", d.account, err)
	}
	return setupDevice(t, d.base, d.ks, id, reg, s, pks, spk)
}

// login refreshes the token (e.g. after a server restart nothing changes,
// but tests use it to prove the key server still knows the device).
func (d *device) login(t testing.TB) {
	t.Helper()
	s, err := d.ks.Login(context.Background(), d.account, d.devID, d.id.Sign)
	if err != nil {
		t.Fatalf("login %s: %v", d.addr(), err)
	}
	d.token = s.Token
}

// session makes sure d has a session with every listed device of account.
func (d *device) session(t testing.TB, account string, devices ...uint32) {
	t.Helper()
	ctx := context.Background()
	for _, id := range devices {
		remote := crypto.Address{Name: account, DeviceID: id}
		if ok, _ := d.proto.HasSession(ctx, remote); ok {
			continue
		}
		bs, err := d.ks.Bundles(ctx, d.token, account, id)
		if err != nil || len(bs) != 1 {
			t.Fatalf("bundle of %s: %v (%d)", remote, err, len(bs))
		}
		b := bs[0]
		cb := crypto.Bundle{
			IdentityKey: b.IdentityKey, RegistrationID: b.RegistrationID, DeviceID: b.DeviceID,
			SignedPreKeyID: b.SignedPreKey.ID, SignedPreKey: b.SignedPreKey.PublicKey, SignedPreKeySignature: b.SignedPreKey.Signature,
			PreKeyID: b.PreKey.ID, PreKey: b.PreKey.PublicKey,
		}
		if err := d.proto.ProcessBundle(ctx, remote, cb); err != nil {
			t.Fatalf("process bundle of %s: %v", remote, err)
		}
	}
}

// encryptSend builds a Send of plaintext to the given devices.
func (d *device) encryptSend(t testing.TB, clientID, plaintext []byte, to ...crypto.Address) *protocol.Frame {
	t.Helper()
	s := &protocol.Send{ClientId: clientID}
	for _, a := range to {
		d.session(t, a.Name, a.DeviceID)
		c, err := d.proto.Encrypt(context.Background(), a, plaintext)
		if err != nil {
			t.Fatalf("encrypt for %s: %v", a, err)
		}
		typ := protocol.EnvelopeType_ENVELOPE_TYPE_SIGNAL
		if c.Type == crypto.MessageTypePreKey {
			typ = protocol.EnvelopeType_ENVELOPE_TYPE_PREKEY
		}
		s.Recipients = append(s.Recipients, &protocol.Recipient{Account: a.Name, Device: a.DeviceID, Payload: c.Body, Type: typ})
	}
	return &protocol.Frame{Body: &protocol.Frame_Send{Send: s}}
}

// decrypt opens an envelope addressed to d.
func (d *device) decrypt(t testing.TB, env *protocol.Envelope) []byte {
	t.Helper()
	from := crypto.Address{Name: env.Sender, DeviceID: env.SenderDevice}
	var c crypto.Ciphertext
	switch env.Type {
	case protocol.EnvelopeType_ENVELOPE_TYPE_PREKEY:
		c = crypto.Ciphertext{Type: crypto.MessageTypePreKey, Body: env.Payload}
	case protocol.EnvelopeType_ENVELOPE_TYPE_SIGNAL:
		c = crypto.Ciphertext{Type: crypto.MessageTypeSignal, Body: env.Payload}
	default:
		t.Fatalf("envelope type %v", env.Type)
	}
	pt, err := d.proto.Decrypt(context.Background(), from, c)
	if err != nil {
		t.Fatalf("%s decrypting %d from %s: %v", d.addr(), env.ServerId, from, err)
	}
	return pt
}

// conn is d's WebSocket to the relay.
type conn struct {
	t      testing.TB
	ws     *websocket.Conn
	frames chan *protocol.Frame
	done   chan struct{}
	err    error
}

func (d *device) connect(t testing.TB) *conn {
	t.Helper()
	c, err := d.dial()
	if err != nil {
		t.Fatalf("connect %s: %v", d.addr(), err)
	}
	return c
}

func (d *device) dial() (*conn, error) {
	h := http.Header{"Authorization": {"Bearer " + d.token}}
	dl := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	ws, resp, err := dl.Dial("ws"+d.base[len("http"):]+protocol.WSPath, h)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, err
	}
	c := &conn{t: d.t, ws: ws, frames: make(chan *protocol.Frame, 100_000), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				c.err = err
				return
			}
			f, err := protocol.DecodeFrame(b)
			if err != nil {
				c.err = err
				return
			}
			c.frames <- f
		}
	}()
	d.t.Cleanup(func() { ws.Close() })
	return c, nil
}

func (c *conn) send(f *protocol.Frame) error {
	b, err := protocol.EncodeFrame(f)
	if err != nil {
		return err
	}
	return c.ws.WriteMessage(websocket.BinaryMessage, b)
}

func (c *conn) next() (*protocol.Frame, error) {
	select {
	case f := <-c.frames:
		return f, nil
	case <-c.done:
		select {
		case f := <-c.frames:
			return f, nil
		default:
		}
		return nil, fmt.Errorf("connection closed: %w", c.err)
	case <-time.After(20 * time.Second):
		return nil, errors.New("no frame within 20 s")
	}
}

func (c *conn) mustNext() *protocol.Frame {
	c.t.Helper()
	f, err := c.next()
	if err != nil {
		c.t.Fatal(err)
	}
	return f
}

func (c *conn) sendAck(f *protocol.Frame) *protocol.SendAck {
	c.t.Helper()
	if err := c.send(f); err != nil {
		c.t.Fatal(err)
	}
	for {
		g := c.mustNext()
		if a := g.GetSendAck(); a != nil {
			if !bytes.Equal(a.ClientId, f.GetSend().ClientId) {
				c.t.Fatalf("SendAck for another message")
			}
			return a
		}
	}
}

// drain reads envelopes until QueueEmpty.
func (c *conn) drain() []*protocol.Envelope {
	c.t.Helper()
	var out []*protocol.Envelope
	for {
		f := c.mustNext()
		switch {
		case f.GetDeliver() != nil:
			out = append(out, f.GetDeliver().Envelopes...)
		case f.GetQueueEmpty() != nil:
			return out
		}
	}
}

func (c *conn) ack(envs []*protocol.Envelope) {
	c.t.Helper()
	for i := 0; i < len(envs); i += protocol.MaxAckIDs {
		var ids []uint64
		for _, e := range envs[i:min(len(envs), i+protocol.MaxAckIDs)] {
			ids = append(ids, e.ServerId)
		}
		if err := c.send(&protocol.Frame{Body: &protocol.Frame_Ack{Ack: &protocol.Ack{ServerIds: ids}}}); err != nil {
			c.t.Fatal(err)
		}
	}
}

// roundTrip waits until the relay processed everything sent before (a
// Ping is answered in order).
func (c *conn) roundTrip() {
	c.t.Helper()
	n := uint64(time.Now().UnixNano())
	if err := c.send(&protocol.Frame{Body: &protocol.Frame_Ping{Ping: &protocol.Ping{Nonce: n}}}); err != nil {
		c.t.Fatal(err)
	}
	for {
		if p := c.mustNext().GetPong(); p != nil && p.Nonce == n {
			return
		}
	}
}

func clientID() []byte {
	b := make([]byte, protocol.ClientIDSize)
	rand.Read(b)
	return b
}

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}
