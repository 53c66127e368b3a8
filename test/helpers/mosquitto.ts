// A real Mosquitto broker for the fleet tests: on 127.0.0.1 at a free port, with persistence in its own
// directory (so a restart keeps retained messages and queued QoS 1 messages), stopped with SIGTERM (the
// broker writes its persistence file on the way out).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { userInfo } from 'node:os';
import path from 'node:path';

export const MOSQUITTO = process.env.SSOCL_MOSQUITTO ?? '/usr/sbin/mosquitto';

export function haveMosquitto(): boolean {
  return spawnSync(MOSQUITTO, ['-h'], { stdio: 'ignore' }).error === undefined;
}

function run(cmd: string, args: string[], cwd?: string): void {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.error?.message ?? r.stderr}`);
}

/** A throwaway CA and a server certificate for 127.0.0.1 signed by it. */
function makeCerts(dir: string): void {
  run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=ssocl test CA'], dir);
  run('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1'], dir);
  writeFileSync(path.join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1\n');
  run('openssl', ['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'san.ext'], dir);
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

async function accepting(port: number, ms: number): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1');
      c.once('connect', () => {
        c.destroy();
        resolve(true);
      });
      c.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`mosquitto did not listen on ${port} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export class Broker {
  private child: ChildProcess | null = null;
  log = '';

  private constructor(
    readonly port: number,
    readonly dir: string,
    private secure: { tls: boolean; users: Record<string, string>; acl?: string },
  ) {}

  get url(): string {
    return `${this.secure.tls ? 'mqtts' : 'mqtt'}://127.0.0.1:${this.port}`;
  }

  /** `tls`: a CA and a server certificate for 127.0.0.1 are made in dir (ca.pem for clients); `users`: only these may connect; `acl`: an acl_file (what each user may read and write). */
  static async start(dir: string, o: { tls?: boolean; users?: Record<string, string>; acl?: string } = {}): Promise<Broker> {
    if (!haveMosquitto()) throw new Error(`${MOSQUITTO} not found: install Debian's mosquitto (.ci/run does) or set SSOCL_MOSQUITTO`);
    mkdirSync(dir, { recursive: true });
    const b = new Broker(await freePort(), dir, { tls: !!o.tls, users: o.users ?? {}, ...(o.acl ? { acl: o.acl } : {}) });
    if (o.tls) makeCerts(dir);
    if (o.users) {
      const file = path.join(dir, 'passwd');
      writeFileSync(file, '');
      for (const [u, p] of Object.entries(o.users)) run('mosquitto_passwd', ['-b', file, u, p]);
    }
    await b.up();
    return b;
  }

  async up(): Promise<void> {
    const conf = path.join(this.dir, 'mosquitto.conf');
    writeFileSync(
      conf,
      // user: run as root, mosquitto would drop to user 'mosquitto' and could not write its persistence file here.
      [
        `listener ${this.port} 127.0.0.1`, `user ${userInfo().username}`, 'persistence true', `persistence_location ${this.dir}/`, 'message_size_limit 0', 'max_queued_messages 1000',
        ...(Object.keys(this.secure.users).length ? ['allow_anonymous false', `password_file ${this.dir}/passwd`] : ['allow_anonymous true']),
        ...(this.secure.acl ? [`acl_file ${this.secure.acl}`] : []),
        ...(this.secure.tls ? [`cafile ${this.dir}/ca.pem`, `certfile ${this.dir}/server.pem`, `keyfile ${this.dir}/server.key`] : []),
        '',
      ].join('\n'),
    );
    const c = spawn(MOSQUITTO, ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
    c.stdout!.on('data', (d) => (this.log += d));
    c.stderr!.on('data', (d) => (this.log += d));
    this.child = c;
    await accepting(this.port, 5000);
  }

  /** SIGTERM, and wait for the exit (persistence written). */
  async down(): Promise<void> {
    const c = this.child;
    if (!c) return;
    this.child = null;
    if (c.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      c.once('exit', () => resolve());
      c.kill('SIGTERM');
    });
  }

  async restart(): Promise<void> {
    await this.down();
    await this.up();
  }
}
