package keyserver

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/keyserver/ksapi"
	"github.com/hushchat/hush/protocol"
)

// Fuzz targets for every request decoder: decodeBody (bounded protojson)
// followed by the request's validator. Neither may panic, and every refusal
// must be an apiError with a 4xx status and a code — the property that
// keeps client mistakes from ever becoming a 500.

func validDevice(f *testing.F) *protocol.DeviceKeys {
	id, err := crypto.GenerateIdentityKeyPair()
	if err != nil {
		f.Fatal(err)
	}
	spk, err := crypto.GenerateSignedPreKey(id, 1)
	if err != nil {
		f.Fatal(err)
	}
	pks, _, err := crypto.GeneratePreKeys(1, 3)
	if err != nil {
		f.Fatal(err)
	}
	lr, err := crypto.GenerateLastResortPreKey()
	if err != nil {
		f.Fatal(err)
	}
	d := &protocol.DeviceKeys{
		IdentityKey:      id.PublicKey(),
		RegistrationId:   1234,
		SignedPrekey:     &protocol.SignedPreKey{KeyId: 1, PublicKey: spk.Public().PublicKey, Signature: spk.Public().Signature},
		LastResortPrekey: &protocol.PreKey{KeyId: lr.ID(), PublicKey: lr.Public().PublicKey},
	}
	for _, p := range pks {
		d.OneTimePrekeys = append(d.OneTimePrekeys, &protocol.PreKey{KeyId: p.ID(), PublicKey: p.Public().PublicKey})
	}
	return d
}

func seed(f *testing.F, m proto.Message) {
	b, err := ksapi.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
}

func addCommonSeeds(f *testing.F) {
	for _, s := range []string{"", "{}", "null", "[]", `{"name":5}`, `{"x":1}`, `{"nonce":"AAAA"}`, "{\"name\":\"\\u0000\"}"} {
		f.Add([]byte(s))
	}
}

func checkRefusal(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var ae *apiError
	if !errors.As(err, &ae) {
		t.Fatalf("refusal is not an apiError: %v", err)
	}
	if ae.status < 400 || ae.status > 499 || ae.code == "" || ae.msg == "" {
		t.Fatalf("refusal %d %q %q is not a 4xx with a code and message", ae.status, ae.code, ae.msg)
	}
}

func fuzzDecoder[M proto.Message](f *testing.F, newMsg func() M, parse func(M) error) {
	f.Fuzz(func(t *testing.T, body []byte) {
		if len(body) > ksapi.MaxBodySize {
			return // the HTTP layer never passes more
		}
		m := newMsg()
		if err := decodeBody(body, m); err != nil {
			checkRefusal(t, err)
			return
		}
		checkRefusal(t, parse(m))
	})
}

func FuzzRegisterRequest(f *testing.F) {
	seed(f, &protocol.RegisterRequest{Name: "alice", Nonce: make([]byte, 32), Device: validDevice(f), Signature: make([]byte, 64)})
	addCommonSeeds(f)
	fuzzDecoder(f, func() *protocol.RegisterRequest { return new(protocol.RegisterRequest) },
		func(m *protocol.RegisterRequest) error { _, err := parseRegister(m); return err })
}

func FuzzAddDeviceRequest(f *testing.F) {
	seed(f, &protocol.AddDeviceRequest{Nonce: make([]byte, 32), Device: validDevice(f), Signature: make([]byte, 64)})
	addCommonSeeds(f)
	fuzzDecoder(f, func() *protocol.AddDeviceRequest { return new(protocol.AddDeviceRequest) },
		func(m *protocol.AddDeviceRequest) error { _, err := parseAddDevice(m); return err })
}

func FuzzTokenRequest(f *testing.F) {
	seed(f, &protocol.TokenRequest{Account: "alice", DeviceId: 1, Nonce: make([]byte, 32), Signature: make([]byte, 64)})
	addCommonSeeds(f)
	fuzzDecoder(f, func() *protocol.TokenRequest { return new(protocol.TokenRequest) },
		func(m *protocol.TokenRequest) error { _, err := parseLogin(m); return err })
}

func FuzzPreKeyUpload(f *testing.F) {
	d := validDevice(f)
	seed(f, &protocol.PreKeyUpload{OneTimePrekeys: d.OneTimePrekeys})
	addCommonSeeds(f)
	fuzzDecoder(f, func() *protocol.PreKeyUpload { return new(protocol.PreKeyUpload) },
		func(m *protocol.PreKeyUpload) error {
			_, err := oneTimePreKeys("one_time_prekeys", m.GetOneTimePrekeys(), 0)
			return err
		})
}

func FuzzSignedPreKey(f *testing.F) {
	d := validDevice(f)
	seed(f, d.SignedPrekey)
	addCommonSeeds(f)
	fuzzDecoder(f, func() *protocol.SignedPreKey { return new(protocol.SignedPreKey) },
		func(m *protocol.SignedPreKey) error {
			_, err := signedPreKey("signed_prekey", m, d.IdentityKey)
			return err
		})
}

func FuzzLastResortPreKey(f *testing.F) {
	seed(f, validDevice(f).LastResortPrekey)
	addCommonSeeds(f)
	fuzzDecoder(f, func() *protocol.PreKey { return new(protocol.PreKey) },
		func(m *protocol.PreKey) error { _, err := preKey("last_resort_prekey", m); return err })
}
