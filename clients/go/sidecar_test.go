package pillion

// Test support: one real Pillion sidecar for the package, started by TestMain, with in-memory
// state and pub/sub, a file secret store, and this package's Subscriber as its app.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const resources = `apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.in-memory
  version: v1
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.in-memory
  version: v1
  metadata:
  - name: deliveryRetryInterval
    value: 20ms
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: localsecrets
spec:
  type: secretstores.local.file
  version: v1
  metadata:
  - name: secretsFile
    value: secrets.json
`

const secretsFile = `{"db-password": "hunter2", "api": {"key": "k-123"}}`

var (
	sidecarURL  string
	sidecarPort int
	client      *Client
	subscriber  = NewSubscriber()
)

func TestMain(m *testing.M) {
	registerSubscriptions(subscriber)
	app := httptest.NewServer(subscriber)
	sidecar, err := startSidecar(app.Listener.Addr().(*net.TCPAddr).Port)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sidecarURL, sidecarPort = sidecar.url, sidecar.port
	client = New(Options{Port: sidecarPort})
	code := m.Run()
	sidecar.stop()
	app.Close()
	os.Exit(code)
}

func pythonPath() (string, error) {
	python := os.Getenv("PILLION_PYTHON")
	if python == "" {
		repo, err := filepath.Abs(filepath.Join("..", ".."))
		if err != nil {
			return "", err
		}
		python = filepath.Join(repo, ".venv", "bin", "python")
	}
	if _, err := os.Stat(python); err != nil {
		return "", fmt.Errorf("no Python for the sidecar at %s: run ./scripts/test once (it creates .venv) or set PILLION_PYTHON", python)
	}
	return python, nil
}

func freePort() (int, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port, nil
}

type sidecarProcess struct {
	port int
	url  string
	stop func()
}

// startSidecar runs `python -m runtime serve` in the environment of the tests. With an app
// port it waits until GET /v1.0/healthz answers 204, which happens once the app's subscriptions
// are loaded; without one, for GET /v1.0/healthz/outbound.
func startSidecar(appPort int) (*sidecarProcess, error) {
	python, err := pythonPath()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pillion-go-")
	if err != nil {
		return nil, err
	}
	resourcesDir := filepath.Join(dir, "resources")
	if err := os.Mkdir(resourcesDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(resourcesDir, "components.yaml"), []byte(resources), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(resourcesDir, "secrets.json"), []byte(secretsFile), 0o644); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "sidecar.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	args := []string{"-m", "runtime", "serve", "--app-id", "gotest", "--dapr-http-port", strconv.Itoa(port),
		"--resources-path", resourcesDir, "--data-dir", filepath.Join(dir, "data")}
	ready := "/v1.0/healthz/outbound"
	if appPort != 0 {
		args = append(args, "--app-port", strconv.Itoa(appPort))
		ready = "/v1.0/healthz"
	}
	cmd := exec.Command(python, args...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logFile, logFile
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1")
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the sidecar: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logFile.Close()
		os.RemoveAll(dir)
	}
	url := "http://127.0.0.1:" + strconv.Itoa(port)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			text, _ := os.ReadFile(logPath)
			stop()
			return nil, fmt.Errorf("the sidecar exited:\n%s", text)
		default:
		}
		resp, err := http.Get(url + ready)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusNoContent {
				return &sidecarProcess{port: port, url: url, stop: stop}, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	text, _ := os.ReadFile(logPath)
	stop()
	return nil, fmt.Errorf("the sidecar was not ready within 20 s:\n%s", text)
}

func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// uniqueKey keeps the tests of one run apart in the shared store.
func uniqueKey(t *testing.T, name string) string {
	return strings.ReplaceAll(t.Name(), "/", "-") + "-" + name
}
