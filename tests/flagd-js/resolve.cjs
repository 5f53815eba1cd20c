// Test oracle: flagd's JavaScript evaluator (@openfeature/flagd-core, the core of flagd's
// in-process JavaScript providers) resolving flag sets Stagecoach rendered.
//
// stdin:  {"flagSets": [{"flagSet": <flagd flag-set document>,
//                        "evaluations": [{"flag": "<key>", "context": {...}}, ...]}, ...]}
// stdout: {"results": [[{"compiled": <answer>, "interpreted": <answer>}, ...], ...]}
//         one answer per evaluation, in input order, where <answer> is
//         {"variant", "value", "reason", "errorCode"} as flagd-core resolves it.
//
// Every flag set is loaded twice: with json-logic-engine compiling the targeting to a
// JavaScript function (flagd-core's default) and interpreting it
// (disableDynamicCodeGeneration, for edge runtimes), and with strict validation, so a set
// flagd-core's bundled schema refuses is an error, not a warning.
//
// Run by crates/stagecoach-engine/tests/toggle_flagd.rs (see STAGECOACH_FLAGD_JS there).
'use strict';

const { FlagdCore, MemoryStorage } = require('@openfeature/flagd-core');

const logger = {
  error: (...args) => console.error('flagd-core error:', ...args),
  warn: (...args) => console.error('flagd-core warn:', ...args),
  info: () => {},
  debug: () => {},
};

function load(flagSet, options) {
  const storage = new MemoryStorage(logger, options);
  storage.setConfigurations(JSON.stringify(flagSet), true);
  return new FlagdCore(storage, logger);
}

// The type an SDK asks for: the type of the flag's variant values.
function flagType(flagSet, key) {
  const variants = Object.values(flagSet.flags?.[key]?.variants ?? {});
  const type = variants.length ? typeof variants[0] : 'boolean';
  return type === 'object' ? 'object' : type;
}

const SENTINEL = { boolean: false, string: '<code default>', number: -1, object: {} };

function resolve(core, type, key, context) {
  const details = core.resolve(type, key, SENTINEL[type], context);
  return {
    variant: details.variant ?? null,
    value: details.variant === undefined ? null : details.value,
    reason: details.reason ?? null,
    errorCode: details.errorCode ?? null,
  };
}

function main(input) {
  const request = JSON.parse(input);
  const results = request.flagSets.map(({ flagSet, evaluations }) => {
    const compiled = load(flagSet, { disableDynamicCodeGeneration: false });
    const interpreted = load(flagSet, { disableDynamicCodeGeneration: true });
    return evaluations.map(({ flag, context }) => {
      const type = flagType(flagSet, flag);
      return {
        compiled: resolve(compiled, type, flag, context),
        interpreted: resolve(interpreted, type, flag, context),
      };
    });
  });
  process.stdout.write(JSON.stringify({ results }));
}

const chunks = [];
process.stdin.on('data', (chunk) => chunks.push(chunk));
process.stdin.on('end', () => main(Buffer.concat(chunks).toString('utf8')));
