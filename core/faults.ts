// Fault injection for the fault suite (test/faults): SSOCL_INJECT_FAULT=name[:arg],... turns on
// deterministic faults at named points. Unset (always, outside tests) it costs one lookup per point.
//   kill-before-rename:SUBSTR  SIGKILL this process after an atomic write's temp file is complete and
//                              before it is renamed over a file whose name contains SUBSTR
//   session-error-after:N      the training session fails (as an ORT run error) after N good runs

const spec = new Map(
  (process.env.SSOCL_INJECT_FAULT ?? '')
    .split(',')
    .filter(Boolean)
    .map((s) => {
      const i = s.indexOf(':');
      return i < 0 ? [s, ''] : [s.slice(0, i), s.slice(i + 1)];
    }),
);

export function fault(name: string): string | undefined {
  return spec.get(name);
}
