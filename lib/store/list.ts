/** Listing an Ollama model store, and ages as `ollama list` shows them. */
import {
  compare,
  openStore,
  scanManifests,
  type StoredModel,
  type StoreOpsOptions,
} from "./scan.ts";

/** Options for {@link listModels}. */
export type ListOptions = StoreOpsOptions;

/**
 * Every model in the store, newest first (as `ollama list`). Walks
 * `manifests/<host>/<repository…>/<tag>`; repositories may have any number of components.
 * A manifest that cannot be parsed is listed with {@link StoredModel.invalid} set.
 *
 * @throws {StoreError} when the store cannot be read.
 */
export async function listModels(options: ListOptions = {}): Promise<StoredModel[]> {
  const store = openStore(options);
  const scan = await scanManifests(store, options.signal);
  return scan.models.sort((a, b) =>
    b.modified.getTime() - a.modified.getTime() || compare(a.name, b.name)
  );
}

/**
 * How long ago, as `ollama list` shows it: "Less than a second ago", "About a minute ago",
 * "3 minutes ago", "About an hour ago", "5 hours ago", "3 days ago", "2 weeks ago",
 * "4 months ago", "2 years ago"; "… from now" for future times.
 */
export function formatAge(then: Date | number, now: Date | number = Date.now()): string {
  const ms = Number(now) - Number(then);
  return ms < 0 ? `${humanDuration(-ms)} from now` : `${humanDuration(ms)} ago`;
}

function humanDuration(ms: number): string {
  const seconds = Math.floor(ms / 1000);
  if (seconds < 1) return "Less than a second";
  if (seconds === 1) return "1 second";
  if (seconds < 60) return `${seconds} seconds`;
  const minutes = Math.floor(seconds / 60);
  if (minutes === 1) return "About a minute";
  if (minutes < 60) return `${minutes} minutes`;
  const hours = Math.round(ms / 3_600_000);
  if (hours === 1) return "About an hour";
  if (hours < 48) return `${hours} hours`;
  if (hours < 24 * 14) return `${Math.floor(hours / 24)} days`;
  if (hours < 24 * 60) return `${Math.floor(hours / 24 / 7)} weeks`;
  if (hours < 24 * 365 * 2) return `${Math.floor(hours / 24 / 30)} months`;
  return `${Math.floor(hours / 24 / 365)} years`;
}
