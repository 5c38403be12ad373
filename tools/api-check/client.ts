// A typed client of the service, generated from its own /openapi.json by openapi-typescript
// (api.d.ts, written by scripts/api-check, not committed) and driven by openapi-fetch. This
// file is only compiled (tsc --strict): it fails to compile when the document stops
// describing what a client of the service needs (an operation, a path parameter, a field, a
// status), which is the point of generating it in scripts/test.
import createClient from "openapi-fetch";
import type { components, paths } from "./api";

type Account = components["schemas"]["AccountOut"];
type Profile = components["schemas"]["ProfileOut"];

export function client(baseUrl: string, token: string) {
  return createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${token}` } });
}

/** The calls an app makes on a user's first visit, each typed end to end. */
export async function firstVisit(baseUrl: string, token: string): Promise<[Account, Profile]> {
  const api = client(baseUrl, token);
  const me = await api.GET("/v1/me");
  if (me.error) throw new Error(`me: ${me.error.code}`);
  const created = await api.POST("/v1/accounts", {
    body: { display_name: "Ada", email: "ada@example.com", settings: { Theme: "dark" } },
  });
  if (!created.data) throw new Error(`create_account: ${created.error?.code}`);
  const account: Account = created.data;
  const byExternalId = await api.GET("/v1/external-users/{external_user_id}/account", {
    params: { path: { external_user_id: account.auth0_user_id ?? "" } },
  });
  if (byExternalId.data?.id !== account.id) throw new Error("account_by_external_id");
  const profile = await api.POST("/v1/accounts/{id}/profiles", {
    params: { path: { id: account.id } },
    body: { name: "Pip", age_group: "6-9", preferred_themes: ["space"] },
  });
  if (!profile.data) throw new Error(`create_profile: ${profile.error?.code}`);
  const patched = await api.PATCH("/v1/profiles/{id}", {
    params: { path: { id: profile.data.id } },
    body: { bio: "likes rockets" },
  });
  if (!patched.data) throw new Error(`update_profile: ${patched.error?.code}`);
  const badge = await api.POST("/v1/profiles/{id}/badges", {
    params: { path: { id: profile.data.id } },
    body: { badge_configuration_id: "first-story", badge_name: "First story" },
  });
  if (badge.response.status !== 201 && badge.response.status !== 200) {
    throw new Error(`award: ${badge.response.status}`);
  }
  return [account, patched.data];
}

/** A sign-up, which needs no token (`security: []`). */
export async function signUp(baseUrl: string, email: string, code: string): Promise<string> {
  const api = createClient<paths>({ baseUrl });
  const requested = await api.POST("/v1/signups", { body: { email, display_name: "Ada" } });
  if (requested.error) throw new Error(`request_signup: ${requested.error.code}`);
  const verified = await api.POST("/v1/signups/verify", { body: { email, code } });
  if (!verified.data) throw new Error(`verify_signup: ${verified.error?.code}`);
  return verified.data.signup_id;
}
