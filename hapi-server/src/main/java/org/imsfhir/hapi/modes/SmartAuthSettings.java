package org.imsfhir.hapi.modes;

import java.util.List;
import org.springframework.core.env.Environment;

/**
 * Settings of the SMART-protected mode, read from Spring properties (command line
 * {@code --ims.auth.issuer=...} or system properties {@code -Dims.auth.issuer=...}).
 *
 * <ul>
 *   <li>{@code ims.auth.issuer}: the authorization server's issuer, e.g. a Keycloak realm URL
 *       {@code http://127.0.0.1:8180/realms/ims-hospital}. Setting it turns the mode on.</li>
 *   <li>{@code ims.auth.audience}: the {@code aud} every access token must carry (required).</li>
 *   <li>{@code ims.auth.jwks-url}: where the issuer's signing keys are (default: Keycloak's
 *       {@code <issuer>/protocol/openid-connect/certs}).</li>
 *   <li>{@code ims.auth.token-url}: the token endpoint announced in
 *       {@code .well-known/smart-configuration} (default: Keycloak's
 *       {@code <issuer>/protocol/openid-connect/token}).</li>
 *   <li>{@code ims.auth.permissions}: which SMART scope syntax the server advertises,
 *       {@code v2} (default), {@code v1} or {@code v1,v2}. Both are always understood.</li>
 * </ul>
 */
public record SmartAuthSettings(String issuer, String audience, String jwksUrl, String tokenUrl, List<String> permissions) {

	public static SmartAuthSettings from(Environment env) {
		String issuer = env.getProperty("ims.auth.issuer", "").trim();
		if (issuer.isEmpty()) {
			return null;
		}
		issuer = issuer.replaceAll("/+$", "");
		String audience = env.getProperty("ims.auth.audience", "").trim();
		if (audience.isEmpty()) {
			throw new IllegalStateException("ims.auth.issuer is set but ims.auth.audience is not");
		}
		String jwks = env.getProperty("ims.auth.jwks-url", issuer + "/protocol/openid-connect/certs");
		String token = env.getProperty("ims.auth.token-url", issuer + "/protocol/openid-connect/token");
		List<String> permissions = List.of(env.getProperty("ims.auth.permissions", "v2").split("\\s*,\\s*"));
		for (String p : permissions) {
			if (!p.equals("v1") && !p.equals("v2")) {
				throw new IllegalStateException("ims.auth.permissions must list v1 and/or v2, not " + p);
			}
		}
		return new SmartAuthSettings(issuer, audience, jwks, token, permissions);
	}
}
