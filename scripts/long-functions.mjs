// Lists every function in src/ (or the given files and folders) whose text spans more than N lines
// (default 100), longest first, and exits 1 if there is any: issue 12 asks for none over about 100.
//
//   node scripts/long-functions.mjs [--max-lines N] [--all] [path ...]
//
// A function's length is the lines from its first line to its last, nested functions included:
// a factory whose closures add up to 400 lines is a 400-line function, however short each closure
// is. Function declarations and expressions, arrow functions, methods, accessors and constructors
// count; the name shown is the declaration's, or the variable or property it is assigned to.
// `--all` prints every function with its length (longest first) and always exits 0.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import ts from 'typescript';

const usage = 'usage: node scripts/long-functions.mjs [--max-lines N] [--all] [path ...]';

const parseArgs = (argv) => {
  const options = { maxLines: 100, all: false, paths: [] };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--max-lines') {
      options.maxLines = Number(argv[i + 1]);
      i += 1;
      if (!Number.isInteger(options.maxLines) || options.maxLines < 1) {
        throw new Error(`--max-lines wants a positive integer\n${usage}`);
      }
    } else if (arg === '--all') options.all = true;
    else if (arg === '--help' || arg === '-h') {
      console.log(usage);
      process.exit(0);
    } else if (arg.startsWith('--')) throw new Error(`unknown option ${arg}\n${usage}`);
    else options.paths.push(arg);
  }
  if (options.paths.length === 0) options.paths.push('src');
  return options;
};

/** Every .ts / .mts / .js / .mjs file under `path` (a file or a folder), declaration files left out. */
const sourceFiles = (path) => {
  if (statSync(path).isFile()) return [path];
  const out = [];
  for (const entry of readdirSync(path, { withFileTypes: true })) {
    const child = join(path, entry.name);
    if (entry.isDirectory()) out.push(...sourceFiles(child));
    else if (/\.(m?ts|m?js)$/.test(entry.name) && !entry.name.endsWith('.d.ts')) out.push(child);
  }
  return out;
};

const isFunction = (node) =>
  ts.isFunctionDeclaration(node) ||
  ts.isFunctionExpression(node) ||
  ts.isArrowFunction(node) ||
  ts.isMethodDeclaration(node) ||
  ts.isConstructorDeclaration(node) ||
  ts.isGetAccessorDeclaration(node) ||
  ts.isSetAccessorDeclaration(node);

const nameOf = (node, file) => {
  if (node.name) return node.name.getText(file);
  const parent = node.parent;
  if (parent && (ts.isVariableDeclaration(parent) || ts.isPropertyAssignment(parent)) && parent.name) {
    return parent.name.getText(file);
  }
  if (parent && ts.isCallExpression(parent)) return `<callback of ${parent.expression.getText(file)}>`;
  return '<anonymous>';
};

/** [{ file, line, name, lines }] for every function in one file. */
const functionsIn = (path) => {
  const text = readFileSync(path, 'utf8');
  const file = ts.createSourceFile(path, text, ts.ScriptTarget.Latest, true);
  const found = [];
  const visit = (node) => {
    if (isFunction(node) && node.body) {
      const first = file.getLineAndCharacterOfPosition(node.getStart(file)).line;
      const last = file.getLineAndCharacterOfPosition(node.getEnd()).line;
      found.push({
        file: relative(process.cwd(), path),
        line: first + 1,
        name: nameOf(node, file),
        lines: last - first + 1,
      });
    }
    ts.forEachChild(node, visit);
  };
  visit(file);
  return found;
};

const main = () => {
  const options = parseArgs(process.argv.slice(2));
  const all = options.paths.flatMap(sourceFiles).flatMap(functionsIn);
  all.sort((a, b) => b.lines - a.lines);
  const long = all.filter((f) => f.lines > options.maxLines);
  for (const f of options.all ? all : long)
    console.log(`${String(f.lines).padStart(5)}  ${f.file}:${f.line}  ${f.name}`);
  if (options.all) return 0;
  console.log(
    long.length === 0
      ? `no function over ${options.maxLines} lines in ${options.paths.join(', ')} (${all.length} functions)`
      : `${long.length} of ${all.length} functions are over ${options.maxLines} lines`,
  );
  return long.length === 0 ? 0 : 1;
};

process.exit(main());
