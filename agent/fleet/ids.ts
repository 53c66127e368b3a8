// Checks of what the command line names in a fleet, without loading the MQTT client.

/** Device ids and fleet names become topic levels: no MQTT wildcards or separators. */
export const ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;

export function checkId(flag: string, v: string): string {
  if (!ID_RE.test(v)) throw new Error(`${flag} ${JSON.stringify(v)}: use 1-64 letters, digits, '.', '_' or '-'`);
  return v;
}

export function checkBrokerUrl(flag: string, url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`${flag} ${url}: not a URL (expected mqtt://HOST:PORT or mqtts://HOST:PORT)`);
  }
  if (!['mqtt:', 'mqtts:', 'ws:', 'wss:', 'tcp:', 'tls:'].includes(u.protocol)) throw new Error(`${flag} ${url}: scheme ${u.protocol} is not MQTT (mqtt://, mqtts://, ws://, wss://)`);
  if (!u.hostname) throw new Error(`${flag} ${url}: no host`);
  return url;
}
