package org.imsfhir.hapi.modes;

import com.fasterxml.jackson.databind.ObjectMapper;
import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * {@code GET [base]/.well-known/smart-configuration} (SMART App Launch 2.x discovery) in the
 * SMART-protected mode: the token endpoint of the configured authorization server, the
 * backend-services authentication it expects ({@code private_key_jwt}, RS384/ES384), the
 * scope syntax ({@code permission-v2} and/or {@code permission-v1}) and the system scopes.
 */
public class SmartConfigurationServlet extends HttpServlet {

	private static final List<String> TYPES =
			List.of("Encounter", "Observation", "Organization", "Patient", "Practitioner", "Procedure");

	private final transient SmartAuthSettings settings;

	public SmartConfigurationServlet(SmartAuthSettings settings) {
		this.settings = settings;
	}

	@Override
	protected void doGet(HttpServletRequest request, HttpServletResponse response) throws IOException {
		Map<String, Object> body = new LinkedHashMap<>();
		body.put("issuer", settings.issuer());
		body.put("jwks_uri", settings.jwksUrl());
		body.put("token_endpoint", settings.tokenUrl());
		body.put("grant_types_supported", List.of("client_credentials"));
		body.put("token_endpoint_auth_methods_supported", List.of("private_key_jwt"));
		body.put("token_endpoint_auth_signing_alg_values_supported", List.of("RS384", "ES384"));
		List<String> scopes = new ArrayList<>();
		List<String> capabilities = new ArrayList<>(List.of("client-confidential-asymmetric"));
		for (String version : settings.permissions()) {
			capabilities.add("permission-" + version);
			for (String type : TYPES) {
				if (version.equals("v2")) {
					scopes.addAll(List.of("system/" + type + ".cus", "system/" + type + ".s",
							"system/" + type + ".rs", "system/" + type + ".cruds"));
				} else {
					scopes.addAll(List.of("system/" + type + ".read", "system/" + type + ".write"));
				}
			}
		}
		body.put("scopes_supported", scopes);
		body.put("capabilities", capabilities);
		response.setStatus(200);
		response.setContentType("application/json");
		response.setCharacterEncoding("UTF-8");
		new ObjectMapper().writeValue(response.getOutputStream(), body);
	}
}
